"""Builds the compiled analysis kernels (everything else is configured in pyproject.toml).

The extension is optional: without a C compiler the package still installs and the analyzers use their
numpy path, which gives the same results (slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("fragility.analysis._ckernels", ["fragility/analysis/_ckernels.c"], extra_compile_args=["-O3", "-ffp-contract=off"], optional=True),
    ]
)
