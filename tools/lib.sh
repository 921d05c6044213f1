# tools/lib.sh: shared by the check scripts in tools/ (source it, don't run it).

# copy_clean_sources ROOT DEST: copy the source tree at ROOT to DEST without
# version control, build products or virtual environments, so a build in
# DEST can never reuse objects compiled with other flags.
copy_clean_sources() {
    mkdir -p "$2"
    tar -C "$1" -cf - \
        --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude='__pycache__' --exclude='*.so' --exclude='*.pyd' --exclude='*.o' \
        --exclude=./src/fastattn/_core.c --exclude=./.ci-venv --exclude=./.venv \
        --exclude=./venv --exclude=./.hypothesis --exclude=./.pytest_cache \
        --exclude=./.benchmarks \
        . | tar -C "$2" -xf -
}
