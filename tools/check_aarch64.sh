#!/usr/bin/env bash
# The C core built for aarch64 and run under qemu-user: tools/check_c_core.sh
# (attention and the linear layer on every path) on a CPU model with the
# dot products (-cpu max: the neon_dotprod and neon_bf16 rows) and on one
# without (-cpu cortex-a72: neon's own blocks).  This is how an x86-64
# machine keeps the aarch64 build compiling and its NEON code right.
#
# Needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu,
# qemu-user); where they are missing and this runs as root with apt-get, it
# installs them, else it says why it cannot run and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-gcc > /dev/null || ! command -v qemu-aarch64 > /dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
        echo "installing gcc-aarch64-linux-gnu and qemu-user"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user \
            > /dev/null 2>&1 || {
            apt-get update -qq > /dev/null 2>&1
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user \
                > /dev/null 2>&1
        }
    fi
    if ! command -v aarch64-linux-gnu-gcc > /dev/null || ! command -v qemu-aarch64 > /dev/null; then
        echo "check_aarch64: not run: no aarch64-linux-gnu-gcc or qemu-aarch64, and they could" \
             "not be installed (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)"
        exit 0
    fi
fi
status=0
for cpu in max cortex-a72; do
    echo "== qemu-aarch64 -cpu $cpu"
    CC=aarch64-linux-gnu-gcc RUN="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
        bash tools/check_c_core.sh || status=1
done
exit $status
