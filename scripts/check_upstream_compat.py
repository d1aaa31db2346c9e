"""Check that `dualspeed_patch.apply()` works on the public upstream LLaVA package, on upstream's own stack.

Run inside an environment that has upstream's pinned libraries (transformers 4.37.x) and NOT this repo's
`llava/` installed, pointing at an exported upstream tree:

    python scripts/check_upstream_compat.py --llava-root /tmp/upstream-llava --world playground/tiny  # prebuilt

One way to make such an environment (torch first, from the local CPU wheel):

    python -m venv /tmp/venv437
    /tmp/venv437/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/venv437/bin/pip install transformers==4.37.2 tokenizers==0.15.1 accelerate==0.21.0 einops==0.6.1 \
        "numpy<2" sentencepiece protobuf pillow safetensors

`--world` is required and must already be built, by this repo's environment (transformers 5): the world builder
does not run under upstream's stack. The repo root is put on sys.path only after upstream `llava` has been imported, so `dualspeed_patch` comes from
this repo and `llava` from --llava-root (checked). The model is the tiny world's LLaMA + CLIP, built through
upstream's own `initialize_vision_modules`. Each check prints PASS/FAIL; the exit status is 1 if any failed.
The checks themselves (one function each, with what it proves) live in `scripts/upstream_compat/`;
`scripts/upstream_env.sh` recreates the environment and the upstream tree in one command (not for CI).
"""
import argparse
import os
import sys
from pathlib import Path

from upstream_compat.context import REPO_ROOT, Context, import_upstream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llava-root", type=Path, required=True, help="exported upstream LLaVA tree (holds llava/)")
    parser.add_argument("--world", type=Path, required=True,
                        help="a tiny world already built with THIS repo's environment (e.g. playground/tiny)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    world = args.world if args.world.is_absolute() else Path.cwd() / args.world
    for sub in ("models/tiny-llama/config.json", "models/tiny-clip/model.safetensors"):
        if not (world / sub).is_file():
            raise SystemExit(f"--world {world}: missing {sub}. Build the world with this repo's environment, not "
                             "upstream's (there its builder fails: 'duplicate file name sentencepiece_model.proto'): "
                             "`python -m playground.build_tiny_world` (or run this repo's tests once), then pass "
                             "its directory")
    arch, cls = import_upstream(args.llava_root)

    import torch
    import transformers

    from upstream_compat.runner import run_checks  # imports dualspeed_patch: only after upstream llava

    print(f"llava from {Path(arch.__file__).parents[2]}; dualspeed_patch from {REPO_ROOT}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    failures = run_checks(Context(arch, cls, world))
    print(f"FAIL: {failures} check(s) failed" if failures else "PASS: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
