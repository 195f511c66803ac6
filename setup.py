"""Build uniql._C from csrc/: C11 against the NumPy C API, OpenBLAS (CBLAS) and LAPACKE.

OpenBLAS and LAPACKE are found through pkg-config where available. When their headers or libraries are
missing the build stops with one line saying which Debian packages to install.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

MISSING = (
    "uniql: OpenBLAS/LAPACKE not found. Install them first: "
    "apt-get install -y libopenblas-dev liblapacke-dev pkg-config"
)


def pkg_config(*args):
    if not shutil.which("pkg-config"):
        return None
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.split()


def blas_flags():
    cflags, libs = [], []
    for pkg in ("openblas", "lapacke"):
        c = pkg_config("--cflags", pkg)
        l = pkg_config("--libs", pkg)
        if c is not None and l is not None:
            cflags += c
            libs += l
    if not any(f.startswith("-lopenblas") for f in libs):
        libs += ["-lopenblas"]
    if not any(f.startswith("-llapacke") for f in libs):
        libs += ["-llapacke"]
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    for d in ("/usr/include/x86_64-linux-gnu/openblas-pthread", "/usr/include/aarch64-linux-gnu/openblas-pthread",
              "/usr/include/openblas"):
        if os.path.isdir(d):
            include_dirs.append(d)
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    libraries = [f[2:] for f in libs if f.startswith("-l")]
    return include_dirs, library_dirs, libraries


class BuildExt(build_ext):
    def build_extensions(self):
        import numpy

        inc, libdirs, libs = blas_flags()
        self._probe(inc, libdirs, libs)
        for ext in self.extensions:
            ext.include_dirs += [numpy.get_include(), *inc]
            ext.library_dirs += libdirs
            ext.libraries += libs
        super().build_extensions()

    def _probe(self, inc, libdirs, libs):
        """Compile and link a one-line program using cblas.h and lapacke.h; fail with one clear line."""
        cc = self.compiler.compiler_so[0] if hasattr(self.compiler, "compiler_so") else "cc"
        src = "#include <cblas.h>\n#include <lapacke.h>\nint main(void){double a=4;" \
              "cblas_dscal(1,1.0,&a,1);return LAPACKE_dpotrf(LAPACK_ROW_MAJOR,'L',1,&a,1);}\n"
        with tempfile.TemporaryDirectory() as d:
            c = os.path.join(d, "probe.c")
            with open(c, "w") as f:
                f.write(src)
            cmd = [cc, c, "-o", os.path.join(d, "probe")] + [f"-I{i}" for i in inc] + \
                  [f"-L{l}" for l in libdirs] + [f"-l{l}" for l in libs]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(MISSING)


sources = sorted(
    p for p in glob.glob("csrc/**/*.c", recursive=True)
    if not p.startswith(("csrc/tests/", "csrc/fuzz/", "csrc/build/"))
)

ext = Extension(
    "uniql._C",
    sources=sources,
    include_dirs=["csrc/include"],
    extra_compile_args=["-std=c11", "-O2", "-fopenmp", "-Wall", "-Wextra", "-Wshadow", "-fno-strict-aliasing"],
    extra_link_args=["-fopenmp"],
    depends=glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.inc", recursive=True),
)

class BuildPy(build_py):
    """Also puts uniql_lmeval.pth at the top of the wheel (site-packages): one line importing _uniql_lmeval_hook,
    which registers `lm_eval --model uniql` when lm-eval is used (lm-eval 0.4 has no plugin discovery)."""

    def run(self):
        super().run()
        self.copy_file("uniql_lmeval.pth", os.path.join(self.build_lib, "uniql_lmeval.pth"))


setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
