"""Build of the fastattn extension.

The C core is compiled into one extension module, ``fastattn._core``.  The
tile kernels in csrc/kernels/ are compiled once per instruction set, each
with its own flags (and only those files get ISA flags); dispatch.c picks
one at run time from cpuid, so the same build runs on any x86-64 CPU.
Nothing is tuned for the build machine's own CPU.

Environment:
  FASTATTN_NO_OPENMP=1   build without OpenMP (the core then runs serially)
  FASTATTN_DEBUG=1       -O1 -g, for debugging and sanitizers
  FASTATTN_EXTRA_CFLAGS  extra flags for every C file (e.g. sanitizers)
"""
import os
import platform
import shlex
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
IS_ARM64 = platform.machine().lower() in ("aarch64", "arm64")

# Per-ISA kernel flags.  The AVX-512 set matches what dispatch.c checks
# (F, DQ, BW, VL and OS support for zmm state).
KERNEL_ISAS = {"scalar": []}
if IS_X86:
    KERNEL_ISAS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    KERNEL_ISAS["avx512"] = ["-mavx512f", "-mavx512dq", "-mavx512bw",
                             "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]
    # bfloat16 decode with vdpbf16ps; used only when cpuid reports it
    KERNEL_ISAS["avx512bf16"] = KERNEL_ISAS["avx512"] + ["-mavx512bf16"]
if IS_ARM64:
    KERNEL_ISAS["neon"] = []  # Advanced SIMD is baseline on aarch64


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")


class BuildExt(build_ext):
    """build_ext that compiles the per-ISA kernels with their own flags and
    probes OpenMP support."""

    def _try_compile(self, code, flags, link_flags):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(code)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                self.compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                              extra_postargs=link_flags)
                return True
            except Exception:
                return False

    def build_extension(self, ext):
        # Cross builds (e.g. macOS universal) are not supported: the kernels
        # follow the machine this build runs on.
        unix = self.compiler.compiler_type == "unix"
        debug = _env_flag("FASTATTN_DEBUG")
        base = []
        if unix:
            base = ["-std=gnu11", "-O1" if debug else "-O3", "-fno-math-errno",
                    "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
            if debug:
                base += ["-g", "-fno-omit-frame-pointer"]
        base += shlex.split(os.environ.get("FASTATTN_EXTRA_CFLAGS", ""))

        openmp = []
        if unix and not _env_flag("FASTATTN_NO_OPENMP"):
            code = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
            if self._try_compile(code, ["-fopenmp"], ["-fopenmp"]):
                openmp = ["-fopenmp"]
            else:
                print("fastattn: OpenMP not available; building the serial core")

        isas = KERNEL_ISAS if unix else {"scalar": []}
        kernel_objs = []
        # Contraction into FMA is wanted in the kernels (it is both faster
        # and more accurate); the driver does no floating-point math.
        kflags = base + (["-ffp-contract=fast"] if unix else [])
        for isa, flags in isas.items():
            src = os.path.join(CSRC, "kernels", f"kernel_{isa}.c")
            kernel_objs += self.compiler.compile(
                [src], output_dir=self.build_temp, include_dirs=[CSRC],
                extra_postargs=kflags + flags, depends=[
                    os.path.join(CSRC, "kernels", "kernel_body.h"),
                    os.path.join(CSRC, "kernels", "kernel.h"),
                    os.path.join(CSRC, "kernels", "kernel_instantiate.h"),
                    os.path.join(CSRC, "fastattn.h")])
        ext.extra_objects = list(ext.extra_objects or []) + kernel_objs

        # Build facts reported by fastattn.info().
        info_dir = os.path.join(self.build_temp, "fa_info")
        os.makedirs(info_dir, exist_ok=True)
        compiler = " ".join(self.compiler.compiler_so[:1]) if unix else self.compiler.compiler_type

        def cstr(s):
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        kernel_desc = "; ".join(f"{isa}: {' '.join(kflags + fl)}" for isa, fl in isas.items())
        with open(os.path.join(info_dir, "fa_build_info.h"), "w") as f:
            f.write(f"#define FA_BUILD_COMPILER {cstr(compiler)}\n")
            f.write(f"#define FA_BUILD_CFLAGS {cstr(' '.join(base + openmp))}\n")
            f.write(f"#define FA_BUILD_KERNEL_FLAGS {cstr(kernel_desc)}\n")
        ext.include_dirs = list(ext.include_dirs) + [info_dir]
        ext.extra_compile_args = list(ext.extra_compile_args or []) + base + openmp
        ext.extra_link_args = list(ext.extra_link_args or []) + openmp + \
            shlex.split(os.environ.get("FASTATTN_EXTRA_LDFLAGS", ""))
        super().build_extension(ext)


extensions = [
    Extension(
        "fastattn._core",
        sources=["src/fastattn/_core.pyx", f"{CSRC}/attention.c", f"{CSRC}/dispatch.c"],
        include_dirs=[CSRC, np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=[f"{CSRC}/fastattn.h", f"{CSRC}/dispatch.h", f"{CSRC}/kernels/kernel.h"],
    )
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
