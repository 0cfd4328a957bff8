"""Builds the C++ part of sparsify: the ONNX Runtime custom-op library for condensed layers.

Everything else (metadata, dependencies, packages) lives in pyproject.toml; setuptools merges the
two. The library is compiled as an extension named ``sparsify_cli.exporters._condensed_ort`` so that
``pip install .`` and ``pip install -e .`` put it next to ``exporters/condensed.py``; it is never
imported by Python but loaded by ONNX Runtime through ``register_custom_ops_library`` (see
``sparsify_cli.exporters.condensed.session_options``). Needs a C++17 compiler (gcc or clang); the
ONNX Runtime
C API header is vendored under ``csrc/condensed/third_party``, so no ONNX Runtime build or
headers are required.
"""

from setuptools import Extension, setup

CSRC = "csrc/condensed"

setup(
    ext_modules=[
        Extension(
            "sparsify_cli.exporters._condensed_ort",
            sources=[
                f"{CSRC}/condensed_kernel.cc",
                f"{CSRC}/condensed_conv.cc",
                f"{CSRC}/condensed_op.cc",
            ],
            depends=[
                f"{CSRC}/condensed_kernel.h",
                f"{CSRC}/condensed_conv.h",
                f"{CSRC}/third_party/onnxruntime/onnxruntime_c_api.h",
            ],
            include_dirs=[f"{CSRC}/third_party"],
            # Portable baseline ISA; the AVX2+FMA path is selected at run time (target
            # attributes in condensed_kernel.cc), so one binary serves every x86-64 CPU.
            extra_compile_args=[
                "-O3",
                "-g0",
                "-std=c++17",
                "-fvisibility=hidden",
                "-Wall",
                "-Wextra",
            ],
            language="c++",
            # A machine without a C++ compiler still installs: the build is skipped with a
            # warning, the standard-op condensed form works, and the custom-op form says why not.
            optional=True,
        )
    ]
)
