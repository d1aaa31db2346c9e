"""The ordered checks and the loop that runs them, printing one PASS/FAIL line each.

Import after `context.import_upstream()` (the check modules import upstream `llava` and `dualspeed_patch`).
"""
import os
import traceback
from typing import Callable, List, Tuple

from . import checks_infer, checks_patch, checks_train
from .context import Context

Check = Callable[[Context], str]

CHECKS: List[Tuple[str, Check]] = [
    ("build upstream model via initialize_vision_modules", checks_patch.build),
    ("upstream original prepare_inputs_labels_for_multimodal", checks_patch.originals),
    ("apply(upstream arch): patched, idempotent, signature keeps images", checks_patch.apply),
    ("full mode == upstream (right/left padding, position_ids, truncation)", checks_patch.full_mode),
    ("fast mode: text + K + 4 for the image sample", checks_patch.fast_mode),
    ("train forward, fast step: finite loss, isolator gradient", checks_train.train_fast),
    ("train forward, slow step: finite loss, teacher without graph", checks_train.train_slow),
    ("slow student CE (alpha=0) == upstream forward loss", checks_train.slow_student_matches_upstream),
    ("eval forward passes through to upstream; remove() restores", checks_infer.inference_passthrough),
    ("upstream generate with the patch (full mode, and pruned inference)", checks_infer.generate),
    ("transformers Trainer: 2 steps x 2 micro-steps with DualSpeedCallback", checks_train.trainer_steps),
]


def run_checks(ctx: Context, checks: List[Tuple[str, Check]] = CHECKS) -> int:
    """Run checks in order on `ctx` (a failure skips nothing but its own check); print PASS/FAIL; return
    the number of failures."""
    failures = 0
    for name, check in checks:
        try:
            detail = check(ctx)
            print(f"PASS  {name}: {detail}", flush=True)
        except Exception as err:  # noqa: BLE001  (report every failure, keep going)
            failures += 1
            frame = traceback.extract_tb(err.__traceback__)[-1]
            print(f"FAIL  {name}: {type(err).__name__}: {err}\n      at {frame.filename}:{frame.lineno}", flush=True)
            if os.environ.get("CHECK_VERBOSE"):
                traceback.print_exc()
    return failures
