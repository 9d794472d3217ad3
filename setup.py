"""The C extension, the one build step pyproject.toml cannot declare without an experimental
setuptools feature. Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

# Digit normalisation's per-pixel steps (service/images.py has the same in numpy, and uses it
# where this could not be compiled: optional).
setup(ext_modules=[Extension("service._digit", ["service/_digit.c"], optional=True)])
