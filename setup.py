"""llava (LLaVA-1.5 / NeXT training, upstream interface) + dualspeed_patch (DualSpeed fast/slow training).

Install torch first (`pip install torch==2.13.0` here, or your CUDA build): a bare `torch` requirement would
pull the newest CUDA wheels.
"""
from setuptools import find_packages, setup

setup(
    name="llava",
    version="1.2.2.post1",
    description="LLaVA training codebase with DualSpeed fast-slow visual-token-pruning training",
    python_requires=">=3.10",
    packages=find_packages(include=["llava", "llava.*", "dualspeed_patch", "dualspeed_patch.*"]),
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "peft>=0.13",
        "accelerate>=1.0",
        "sentencepiece>=0.2",
        "protobuf>=4",
        "safetensors>=0.4",
        "pillow>=9",
        "numpy",
        "tqdm",
    ],
    # Pruned inference: DualSpeed's evaluation flags, found by llava.eval through its extension entry points.
    entry_points={"llava.eval_extensions": ["dualspeed = dualspeed_patch.pruned_inference"]},
    extras_require={
        "train": ["deepspeed>=0.15"],
        "flash": ["flash-attn>=2.5"],
        "test": ["pytest>=7"],
        "plot": ["matplotlib"],
    },
)
