"""The C extension, the one build step pyproject.toml cannot declare without an experimental
setuptools feature. Everything else about the package is in pyproject.toml."""

import os
import shutil
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Set (to 1) where the slower Python fallback is not acceptable: the Dockerfile.
REQUIRE = os.environ.get("CONVNET_REQUIRE_DIGIT_KERNEL") == "1"


def missing_prerequisite() -> str | None:
    """What a build of service/_digit.c lacks, said plainly: setuptools' own error for a missing
    Python.h blames the compiler."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"{headers} is missing: install Python's C headers (Debian: python3-dev)"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler {compiler!r} on PATH: install one (Debian: gcc libc6-dev)"
    return None


class BuildDigitKernel(build_ext):
    def run(self) -> None:
        problem = missing_prerequisite()
        if problem is None:
            try:
                super().run()
                return
            except Exception as exc:  # the compiler's own output is above this line
                problem = f"compiling it failed: {exc}"
        message = f"service/_digit.c (the digit kernel) was not built: {problem}"
        if REQUIRE:
            raise SystemExit(f"error: {message} (CONVNET_REQUIRE_DIGIT_KERNEL=1)")
        print(f"WARNING: {message}; service/images.py falls back to its slower Python reference")


# The digit normalisation (service/images.py has the same in numpy and Pillow, and uses it where
# this could not be compiled). libm for sin, as Pillow's resampler calls it.
setup(
    ext_modules=[Extension("service._digit", ["service/_digit.c"], libraries=["m"])],
    cmdclass={"build_ext": BuildDigitKernel},
)
