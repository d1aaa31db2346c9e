"""DualSpeed's state beside one LLaVA model, attached by one public call: `attach(model, args) -> DualSpeed`.

Everything the method keeps between steps lives in one `DualSpeed` object: the settings, the mode schedule, the
pruning method's registry entry and what it reads (FitPrune recipe, CLIP text scorer, the batch's instructions),
the mode isolator and the metrics. Training, evaluation, benchmarks, scripts and tests all reach it the same way
(`attach` / `state_of`). It is a plain attribute of the model, outside its state dict, optimizer and ZeRO.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from .config import DualSpeedArguments
from .fitprune import FitPruneRecipe
from .inputs import FAST, FULL, PRUNED, VISUAL_MODES
from .isolator import ModeIsolator, attach_isolator, get_isolator
from .metrics import DualSpeedMetrics
from .methods import Method, get_method
from .modes import ModeSchedule, training_slow_ratio

STATE_ATTR = "_dualspeed"
# Config field (read by llava's model loading) naming the weights that plain LLaVA inference does not use.
TRAINING_ONLY_FIELD = "training_only_modules"

__all__ = ["DualSpeed", "FAST", "FULL", "PRUNED", "attach", "state_of", "unwrap_llava", "visual_mode"]


@dataclass(eq=False)
class DualSpeed:
    """What DualSpeed keeps for one model. `schedule` is set only while training with DualSpeed on."""

    args: DualSpeedArguments
    schedule: Optional[ModeSchedule] = None
    metrics: Optional[DualSpeedMetrics] = None
    isolator: Optional[ModeIsolator] = None
    recipe: Optional[FitPruneRecipe] = None  # FitPrune's per-layer token counts (in-LLM method only)
    text_scorer: Any = None  # CLIP text tower, for instruction-aware pruners (CDPruner)
    instructions: Optional[list] = None  # the current batch's instruction texts, set by each forward
    mode: str = FULL  # visual mode of forwards that build their own input (generation, evaluation)

    @property
    def method(self) -> Method:
        """The registry entry of `--vtp_method` (its kind and the context it reads)."""
        return get_method(self.args.vtp_method)

    @property
    def training(self) -> bool:
        """Whether training forwards run DualSpeed's fast/slow steps."""
        return bool(self.args.dualspeed) and self.schedule is not None

    def is_slow(self) -> bool:
        """Whether the current micro-step runs in slow mode (same answer on every rank)."""
        return self.schedule is not None and self.schedule.is_slow()

    def pruner_seed(self) -> int:
        """Seed of the current step's pruner randomness (0 outside training)."""
        return self.schedule.pruner_seed() if self.schedule is not None else 0


HOST_ATTR = "_dualspeed_host"


def unwrap_llava(model):
    """The LLaVA causal LM inside a peft wrapper (or the model itself); for a model DualSpeed reaches through a host
    adapter (Hugging Face's Llava classes, `dualspeed_patch.hf`), that adapter."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.__dict__.get(HOST_ATTR, base)


def state_of(model) -> DualSpeed:
    """The DualSpeed state attached to `model`; a passive one read from its config when none is (e.g. evaluation of
    a checkpoint: its recorded settings, no schedule), kept for later calls."""
    llava = unwrap_llava(model)
    state = llava.__dict__.get(STATE_ATTR)
    if state is None:
        state = DualSpeed(DualSpeedArguments.from_config(llava.config), isolator=get_isolator(llava))
        llava.__dict__[STATE_ATTR] = state
    return state


def attach(model, args: DualSpeedArguments, *, seed: int = 0, pretraining: bool = False,
           isolator_source: Optional[str] = None, announce: bool = True) -> DualSpeed:
    """Attach DualSpeed to a LLaVA causal LM (peft-wrapped or not) and return its state.

    The settings are recorded in the model's config (a checkpoint says how it was trained). With `args.dualspeed`
    it also gets what training needs: the mode isolator (loaded from `isolator_source` when given), the mode
    schedule (seeded by `seed`; fast mode only when `pretraining`, as in the paper), the metrics, and what the
    pruning method reads (FitPrune's recipe, checked against the model; CLIP's text tower for CDPruner).
    """
    llava = unwrap_llava(model)
    llava.config.update(args.to_config_dict())
    state = DualSpeed(args, isolator=get_isolator(llava))
    llava.__dict__[STATE_ATTR] = state
    if not args.dualspeed:
        return state
    state.isolator = attach_isolator(llava, args.mode_isolator_len, isolator_source, announce=announce)
    if state.isolator is not None:  # saved with the model, but plain LLaVA inference does not use it
        llava.config.update({TRAINING_ONLY_FIELD: ["mode_isolator"]})
    state.recipe = load_recipe(llava, args)
    state.text_scorer = text_scorer_for(llava, state.method, args.clip_text_tower)
    slow_ratio = training_slow_ratio(args.slow_mode_ratio, pretraining, args.slow_mode_in_pretraining)
    state.schedule, state.metrics = ModeSchedule(seed, slow_ratio), DualSpeedMetrics()
    return state


def load_recipe(llava, args: DualSpeedArguments) -> Optional[FitPruneRecipe]:
    """The method's recipe file (`--fitprune_recipe`), loaded and checked against the model's depth; None if unused."""
    if not getattr(args, "fitprune_recipe", None) or "fitprune_recipe" not in get_method(args.vtp_method).required_flags:
        return None
    recipe = FitPruneRecipe.load(args.fitprune_recipe)
    recipe.check_model(llava.config)
    return recipe


def text_scorer_for(llava, method: Method, clip_path: Optional[str] = None):
    """CLIP's text tower (from `clip_path`, else the vision tower's checkpoint) when the method reads instruction
    relevance, else None."""
    if "relevance" not in method.context_keys:
        return None
    from .vision_context import ClipTextScorer

    tower = llava.get_vision_tower()
    path = clip_path or getattr(tower, "vision_tower_name", None)
    if path is None:
        raise ValueError(f"--vtp_method {method.name} scores instructions with CLIP's text tower, which this model "
                         "does not name (Hugging Face Llava keeps only the vision tower): pass --clip_text_tower "
                         "<full CLIP checkpoint>")
    return ClipTextScorer(path).to(device=tower.device, dtype=tower.dtype)


@contextlib.contextmanager
def visual_mode(model, mode: str) -> Iterator[DualSpeed]:
    """Run the enclosed forward passes of `model` that build their own input (generation, evaluation) in visual
    mode `mode` (full / fast / pruned)."""
    if mode not in VISUAL_MODES:
        raise ValueError(f"visual mode must be one of {', '.join(VISUAL_MODES)}; got {mode!r}")
    state = state_of(model)
    previous, state.mode = state.mode, mode
    try:
        yield state
    finally:
        state.mode = previous
