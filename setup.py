"""Packaging for CadCoder: the Hub-face modules plus the `cadcoder` CAD package."""

from setuptools import find_packages, setup

HUB_FACE = ["configuration_cadcoder", "modeling_cadcoder", "processing_cadcoder"]

CORE = [
    "torch>=2.4",
    "transformers>=5.0,<6",
    "timm>=1.0",
    "tokenizers>=0.21",
    "safetensors",
    "huggingface_hub",
    "pillow",
    "numpy",
]
CAD = [
    "cadquery>=2.5",
    "trimesh>=4",
    "manifold3d>=3",
    "scipy",
    "tqdm",
    "datasets>=3",
    "evaluate>=0.4.6",
    "matplotlib",
]
TRAIN = ["accelerate>=1.0", "tensorboard"]
DEMO = ["gradio>=5,<7"]
# The browser test drives Debian's chromium through Playwright's driver (no browser download).
TEST = ["pytest>=8", "pytest-timeout", "psutil", "nbclient", "nbformat", "ipykernel", "playwright>=1.40"]

setup(
    name="cadcoder",
    version="0.1.0",
    description="Image-to-CadQuery code generation as a Hugging Face model package",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    py_modules=HUB_FACE,
    packages=find_packages(include=["cadcoder", "cadcoder.*"]),
    install_requires=CORE + CAD,
    extras_require={"train": TRAIN, "demo": DEMO, "test": TRAIN + DEMO + TEST, "all": TRAIN + DEMO + TEST},
    entry_points={"console_scripts": ["cadcoder=cadcoder.cli:main"]},
)
