"""Build of the fastattn extension.

The C core is compiled into one extension module, ``fastattn._core``.  The
kernels in csrc/kernels/ are compiled once per instruction set, each with its
own flags from csrc/isa_flags.txt (only those files get ISA flags);
dispatch.c picks one at run time from cpuid, so the same build runs on any
CPU of its architecture.  Nothing is tuned for the build machine's own CPU.

The target architecture is the compiler's (``cc -dumpmachine``, or its
predefined macros), never the build machine's, so cross compilers work.

Supported: Linux (and other ELF unix systems) with GCC or Clang, on x86-64
and aarch64.  Not supported, and refused with an error:
  * Windows: the C core is GNU C (cpuid.h, __builtin_* intrinsics, inline
    asm for xgetbv, pthread_atfork) that MSVC does not compile;
  * macOS: it saves AVX-512 state on demand, so the xgetbv check of
    dispatch.c reports no zmm support, Apple's clang has no OpenMP, and no
    build there is tested.  FASTATTN_ALLOW_UNTESTED_PLATFORM=1 lets a unix
    compiler try anyway.

Environment:
  FASTATTN_NO_OPENMP=1     build without OpenMP (the core then runs serially)
  FASTATTN_DEBUG=1         -O1 -g, for debugging and sanitizers
  FASTATTN_EXTRA_CFLAGS    extra flags for every C file (e.g. sanitizers)
  FASTATTN_EXTRA_LDFLAGS   extra link flags
  FASTATTN_BUILD_CACHE=DIR reuse objects compiled before into DIR (see
                           ObjectCache: CI builds the same sources several
                           times, from different copies of the tree)
"""
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"
ISA_TABLE = os.path.join(CSRC, "isa_flags.txt")
# The oldest NumPy the built module runs with (pyproject.toml's dependency).
NPY_TARGET = "NPY_1_23_API_VERSION"


def read_isa_table(path=ISA_TABLE):
    """Rows of csrc/isa_flags.txt as (name, architectures, flags)."""
    rows = []
    with open(path) as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            name, arches = fields[0], fields[1].split(",")
            flags = [fl for fl in fields[2:] if fl != "-"]
            rows.append((name, arches, flags))
    return rows


def kernel_isas(target):
    """{isa: flags} of the kernel rows compiled for a target triple."""
    return {name: flags for name, arches, flags in read_isa_table()
            if "any" in arches or any(target.startswith(a) for a in arches)}


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def _warn(message):
    bar = "*" * 72
    print(f"\n{bar}\nfastattn WARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


def _c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ObjectCache:
    """Objects keyed by what determines them: the compiler's version, its
    arguments less paths (include folders, source, output) and the
    preprocessed source (without line markers, so the copy of the tree it
    was compiled from does not matter).  The kernel files take minutes to
    optimize and seconds to preprocess.  A hit copies the object; a new
    object is stored by rename, so concurrent builds sharing DIR are safe.
    The C test scripts in tools/ use the same rule (tools/lib.sh)."""

    def __init__(self, folder, compiler):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.compiler = compiler
        self.compile = compiler._compile
        cc = compiler.compiler_so[0]
        self.version = subprocess.run([cc, "--version"], capture_output=True,
                                      text=True).stdout

    def _key(self, src, args):
        kept = [a for a in args if not a.startswith("-I") and a != "-c"]
        pre = subprocess.run(kept + ["-E", "-P", src] +
                             [a for a in args if a.startswith("-I")],
                             capture_output=True, check=True).stdout
        h = hashlib.sha256()
        for part in [self.version] + kept:
            h.update(part.encode() + b"\0")
        h.update(pre)
        return h.hexdigest()

    def __call__(self, obj, src, ext, cc_args, extra_postargs, pp_opts):
        args = list(self.compiler.compiler_so) + list(cc_args) + list(extra_postargs)
        try:
            key = self._key(src, args)
        except (OSError, subprocess.CalledProcessError):
            return self.compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
        stored = os.path.join(self.folder, key + ".o")
        if os.path.exists(stored):
            os.makedirs(os.path.dirname(obj) or ".", exist_ok=True)
            shutil.copyfile(stored, obj)
            print(f"fastattn: {src}: reused {stored}", flush=True)
            return None
        self.compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
        tmp = f"{stored}.{os.getpid()}.{threading.get_ident()}"
        shutil.copyfile(obj, tmp)
        os.replace(tmp, stored)
        return None


class BuildExt(build_ext):
    """build_ext that compiles the per-ISA kernels with their own flags and
    probes OpenMP support."""

    def _try_compile(self, code, flags, link_flags=None):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(code)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                if link_flags is not None:
                    self.compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                                  extra_postargs=link_flags)
                return True
            except Exception:
                return False

    def _check_platform(self):
        if self.compiler.compiler_type != "unix":
            sys.exit(f"fastattn: the {self.compiler.compiler_type!r} compiler is not "
                     "supported: the C core is GNU C (GCC or Clang on Linux).")
        if sys.platform == "darwin" and not _env_flag("FASTATTN_ALLOW_UNTESTED_PLATFORM"):
            sys.exit("fastattn: macOS is not supported (AVX-512 state is enabled on demand "
                     "there, which dispatch.c does not detect, Apple clang has no OpenMP, and "
                     "no build is tested); FASTATTN_ALLOW_UNTESTED_PLATFORM=1 tries anyway.")

    def _target(self):
        """The compiler's target triple (cross compilers included)."""
        cc = self.compiler.compiler_so[0]
        try:
            out = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.CalledProcessError):
            pass
        for triple, macro in (("x86_64", "__x86_64__"), ("aarch64", "__aarch64__")):
            if self._try_compile(f"#ifndef {macro}\n#error no\n#endif\nint x;\n", []):
                return triple + "-unknown"
        return "unknown"

    def _compiler_desc(self, target):
        cc = self.compiler.compiler_so[0]
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                     check=True).stdout.splitlines()[0].strip()
        except (OSError, subprocess.CalledProcessError, IndexError):
            version = cc
        return f"{version} [{target}]"

    def _openmp_flags(self):
        if _env_flag("FASTATTN_NO_OPENMP"):
            _warn("FASTATTN_NO_OPENMP is set: building the SERIAL core (one thread).")
            return []
        code = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
        if self._try_compile(code, ["-fopenmp"], ["-fopenmp"]):
            return ["-fopenmp"]
        _warn("this compiler cannot build and link OpenMP code (-fopenmp, omp.h, libgomp "
              "or libomp): building the SERIAL core, which runs every call on one thread. "
              "Install your compiler's OpenMP runtime (e.g. libgomp) and rebuild for threads.")
        return []

    def _usable_isa_flags(self, isas):
        """The rows' flags without those the compiler lacks (e.g. -mamx-tile
        before gcc 11 / clang 12): kernel_amx.c then builds an empty table."""
        usable = {}
        for isa, flags in isas.items():
            if flags and not self._try_compile("int fa_probe;\n", flags):
                kept = [fl for fl in flags if self._try_compile("int fa_probe;\n", [fl])]
                _warn(f"the compiler lacks {' '.join(f for f in flags if f not in kept)}: "
                      f"kernel_{isa}.c is compiled without them")
                flags = kept
            usable[isa] = flags
        return usable

    def _amx_fp16_asm(self, isas):
        """Whether the assembler knows TDPFP16PS: kernel_amx.c then writes the
        mnemonic (FA_AS_TDPFP16PS), else its bytes (amx/amx_tileops.h)."""
        probe = 'void fa_probe(void) { __asm__ volatile("tdpfp16ps %%tmm2, %%tmm1, %%tmm0" ::); }\n'
        if "amx" in isas and self._try_compile(probe, []):
            isas["amx"] = isas["amx"] + ["-DFA_AS_TDPFP16PS=1"]
        return isas

    def _base_flags(self):
        debug = _env_flag("FASTATTN_DEBUG")
        base = ["-std=gnu11", "-O1" if debug else "-O3", "-fno-math-errno",
                "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
        if debug:
            base += ["-g", "-fno-omit-frame-pointer"]
        return base + shlex.split(os.environ.get("FASTATTN_EXTRA_CFLAGS", ""))

    def build_extension(self, ext):
        self._check_platform()
        target = self._target()
        base = self._base_flags()
        openmp = self._openmp_flags()
        isas = self._amx_fp16_asm(self._usable_isa_flags(kernel_isas(target)))
        cache = os.environ.get("FASTATTN_BUILD_CACHE", "")
        if cache:   # after the probes: a failed probe is never stored
            self.compiler._compile = ObjectCache(os.path.abspath(cache), self.compiler)
        headers = glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True) + [ISA_TABLE]
        # Contraction into FMA is wanted in the kernels (it is both faster
        # and more accurate); the driver does no floating-point math.
        kflags = base + ["-ffp-contract=fast"]

        def compile_kernel(isa):
            src = os.path.join(CSRC, "kernels", f"kernel_{isa}.c")
            return self.compiler.compile([src], output_dir=self.build_temp, include_dirs=[CSRC],
                                         extra_postargs=kflags + isas[isa], depends=headers)

        # The kernel files are the bulk of the build: compile them side by side.
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            kernel_objs = [obj for objs in pool.map(compile_kernel, isas) for obj in objs]
        ext.extra_objects = list(ext.extra_objects or []) + kernel_objs
        ext.depends = list(ext.depends or []) + headers

        # Build facts reported by fastattn.show_config().
        info_dir = os.path.join(self.build_temp, "fa_info")
        os.makedirs(info_dir, exist_ok=True)
        kernel_desc = "; ".join(f"{isa}: {' '.join(kflags + fl)}" for isa, fl in isas.items())
        with open(os.path.join(info_dir, "fa_build_info.h"), "w") as f:
            f.write(f"#define FA_BUILD_COMPILER {_c_string(self._compiler_desc(target))}\n")
            f.write(f"#define FA_BUILD_CFLAGS {_c_string(' '.join(base + openmp))}\n")
            f.write(f"#define FA_BUILD_KERNEL_FLAGS {_c_string(kernel_desc)}\n")
        ext.include_dirs = list(ext.include_dirs) + [info_dir]
        ext.extra_compile_args = list(ext.extra_compile_args or []) + base + openmp
        ext.extra_link_args = list(ext.extra_link_args or []) + openmp + \
            shlex.split(os.environ.get("FASTATTN_EXTRA_LDFLAGS", ""))
        super().build_extension(ext)


extensions = [
    Extension(
        "fastattn._core",
        sources=["src/fastattn/_core.pyx", f"{CSRC}/attention.c", f"{CSRC}/dispatch.c",
                 f"{CSRC}/amx/amx_gate.c", f"{CSRC}/amx/amx_emu.c",
                 f"{CSRC}/amx/tile_canary.c"],
        include_dirs=[CSRC, np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("NPY_TARGET_VERSION", NPY_TARGET)],
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
