"""The C extension, the one build step pyproject.toml cannot declare without an experimental
setuptools feature. Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

# The digit normalisation (service/images.py has the same in numpy and Pillow, and uses it where
# this could not be compiled: optional). libm for sin, as Pillow's resampler calls it.
setup(
    ext_modules=[Extension("service._digit", ["service/_digit.c"], libraries=["m"], optional=True)]
)
