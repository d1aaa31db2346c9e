"""Setup shared by the checks: where upstream `llava` and this repo's `dualspeed_patch` come from, and `Context`.

Imports nothing heavy at module level, so the command line can be validated before torch is loaded.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
ISOLATOR_LEN = 4
PRUNING_RATIO = 0.9


def import_upstream(llava_root: Path) -> Tuple[ModuleType, type]:
    """Import upstream `llava` (model classes + arch module) from `llava_root`, then make `dualspeed_patch`
    importable from this repo without letting this repo's own `llava/` shadow upstream's."""
    if not (llava_root / "llava" / "model" / "llava_arch.py").is_file():
        raise SystemExit(f"--llava-root {llava_root}: no llava/model/llava_arch.py there")
    sys.path.insert(0, str(llava_root))
    import llava.model.llava_arch as arch
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    found = Path(arch.__file__).resolve()
    if llava_root.resolve() not in found.parents:
        raise SystemExit(f"imported llava from {found}, not from --llava-root {llava_root}")
    sys.path.append(str(REPO_ROOT))
    import dualspeed_patch  # noqa: F401

    return arch, LlavaLlamaForCausalLM


@dataclass
class Context:
    """What the checks share; each check takes it as its only argument.

    `arch` (upstream's `llava.model.llava_arch`), `cls` (upstream's `LlavaLlamaForCausalLM`) and `world` (the tiny
    world's directory) come from the command line. The other fields are filled in by the check named in the
    comment and read by later ones; reading one whose producer failed raises AttributeError, which the runner
    reports as a FAIL of the reading check.
    """

    arch: ModuleType
    cls: type
    world: Path
    # build
    model: Any = field(init=False)
    batch: Dict[str, Any] = field(init=False)
    original: Callable = field(init=False)  # upstream's prepare_inputs_labels_for_multimodal
    forwards: Dict[type, Callable] = field(init=False)  # upstream's forward of each causal-LM subclass
    # originals: upstream's prepare_inputs_labels_for_multimodal results on `batch`
    expected: tuple = field(init=False)
    expected_pos: tuple = field(init=False)
    expected_left: tuple = field(init=False)
    expected_trunc: tuple = field(init=False)
    # train_fast: first global step the schedule picks slow mode
    slow_step: int = field(init=False)
