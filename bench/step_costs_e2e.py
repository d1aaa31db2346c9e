"""Short real LLaVATrainer runs for bench/step_costs.py: baseline and DualSpeed advancing in lockstep.

Checks the end-to-end speed-up predicted from the step costs against real training: the two runs take turns
one optimizer step at a time (Lockstep), so that load changes on a shared machine hit them alike, and the
schedule seed is chosen so that the timed steps hold the nominal share of slow steps.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable, Dict, List, Tuple

import torch

from common import CLOCKS, SyntheticDataset, collate, prepare_stage, summarise

import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch.modes import is_slow_step  # noqa: E402
from dualspeed_patch.state import state_of  # noqa: E402
from step_costs_rows import dualspeed_args  # noqa: E402

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from llava.train.llava_trainer import LLaVATrainer


def schedule_seed(steps: int, warmup: int, slow_ratio: float) -> int:
    """Smallest seed whose schedule has exactly round(r * timed) slow steps among the timed steps (the run's mix
    is the nominal r as nearly as an integer count allows) and, with >= 2 warm-up steps, both modes in the warm-up
    (both code paths warm before timing starts)."""
    timed = steps - warmup
    want = round(slow_ratio * timed)
    for seed in range(100_000):
        slow = [is_slow_step(seed, g, 0, slow_ratio) for g in range(steps)]
        both = warmup < 2 or slow_ratio in (0.0, 1.0) or len(set(slow[:warmup])) == 2
        if both and sum(slow[warmup:]) == want:
            return seed
    raise RuntimeError(f"no schedule seed gives {want} slow steps in {timed} timed steps at r={slow_ratio}")


class Lockstep:
    """Lets several Trainer runs, each in its own thread, take turns one optimizer step at a time, so that load
    changes on a shared machine hit them alike. Only the runner holding the turn works (the others wait), so the
    process's CPU time between a runner's resume and its hand-off is that runner's own; those intervals are
    recorded per step on both clocks. `prepare(name)` is called whenever a runner (re)gains the turn."""

    def __init__(self, names: List[str], prepare: Callable[[str], None]):
        self.names, self.prepare = list(names), prepare
        self.turn, self.done = self.names[0], set()
        self.cond = threading.Condition()
        self.start: Dict[str, Dict[str, float]] = {}
        self.steps: Dict[str, Dict[str, List[float]]] = {n: {c: [] for c in CLOCKS} for n in self.names}

    def _next(self, name: str) -> str:
        i = self.names.index(name)
        for other in self.names[i + 1:] + self.names[:i + 1]:
            if other not in self.done:
                return other
        return name

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self.prepare(name)
        self.start[name] = {c: read() for c, read in CLOCKS.items()}

    def step_done(self, name: str) -> None:
        """End of an optimizer step: record it, hand the turn on, wait for it to come back."""
        for c, read in CLOCKS.items():
            self.steps[name][c].append(read() - self.start[name][c])
        with self.cond:
            self.turn = self._next(name)
            self.cond.notify_all()
        self.acquire(name)

    def finish(self, name: str) -> None:
        with self.cond:
            self.done.add(name)
            self.turn = self._next(name)
            self.cond.notify_all()

    def callback(self, name: str) -> TrainerCallback:
        """A TrainerCallback that takes turns as `name`."""
        from transformers import TrainerCallback

        lock = self

        class _TakeTurns(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                lock.start[name] = {c: read() for c, read in CLOCKS.items()}  # setup before this is not timed

            def on_step_end(self, args, state, control, **kwargs):
                lock.step_done(name)

        return _TakeTurns()

    def run(self, jobs: Dict[str, Callable[[], object]]) -> None:
        """Run each job (a `trainer.train`) in its own thread, taking turns; re-raise the first failure."""
        errors: List[BaseException] = []
        threads_per_run = torch.get_num_threads()

        def work(name: str) -> None:
            torch.set_num_threads(threads_per_run)
            try:
                self.acquire(name)
                jobs[name]()
            except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
                errors.append(exc)
            finally:
                self.finish(name)

        threads = [threading.Thread(target=work, args=(n,), name=f"bench-{n}") for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def build_trainer(a: argparse.Namespace, pristine: torch.nn.Module, stage: str, s: dict, batch: int, image_side: int,
                  dualspeed: bool, seed: int, output_dir: str,
                  callbacks: list) -> Tuple[LLaVATrainer, torch.nn.Module]:
    """A LLaVATrainer for a short run of `stage` (plain LLaVA, or DualSpeed set up as its training entry does);
    returns (trainer, LLaVA model)."""
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer
    from dualspeed_patch.train import setup_dualspeed

    model = copy.deepcopy(pristine)
    step_model = prepare_stage(model, stage, lora_r=a.lora_r, lora_alpha=2 * a.lora_r)
    data = SyntheticDataset(a.e2e_steps * batch, s["text"], s["answer"], s["image_at"], image_side, a.vocab, seed=a.seed)
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch, max_steps=a.e2e_steps, learning_rate=s["lr"],
        lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no", logging_strategy="no", report_to="none",
        use_cpu=True, seed=seed, dataloader_num_workers=0, disable_tqdm=True, lora_enable=stage == "sft",
        mm_projector_lr=s["projector_lr"],
    )
    args.tune_mm_mlp_adapter = stage == "pretrain"  # as llava.train.train sets it
    callbacks = list(callbacks)
    if dualspeed:
        ds = dualspeed_args(a, "divprune", a.slow_ratio)
        model_args = SimpleNamespace(pretrain_mm_mlp_adapter=None, tune_mm_mlp_adapter=stage == "pretrain")
        callbacks += setup_dualspeed(step_model, model_args, SimpleNamespace(), args, ds)
    trainer = LLaVATrainer(model=step_model, args=args, train_dataset=data, data_collator=collate, callbacks=callbacks)
    return trainer, model


def measure_e2e(a: argparse.Namespace, pristine: torch.nn.Module, stage: str, counts: dict, stages: dict,
                image_side: int, cell: dict) -> dict:
    """Baseline and DualSpeed LLaVATrainer runs of one stage, advancing in lockstep (one optimizer step each in
    turn), and the speed-up predicted from the cell's step costs for the slow share the run actually had."""
    s, batch = stages[stage], counts["llava15"]["batch"]
    r = a.slow_ratio if stage == "sft" else 0.0
    seed = schedule_seed(a.e2e_steps, a.e2e_warmup, r) if 0.0 < r < 1.0 else a.seed
    timed = a.e2e_steps - a.e2e_warmup
    slow_timed = sum(is_slow_step(seed, g, 0, r) for g in range(a.e2e_warmup, a.e2e_steps))
    share = slow_timed / timed
    lock = Lockstep(["baseline", "dualspeed"], lambda name: (patch.apply if name == "dualspeed" else patch.remove)())
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.apply()
        runs = {name: build_trainer(a, pristine, stage, s, batch, image_side, name == "dualspeed", seed,
                                    str(Path(tmp) / name), [lock.callback(name)]) for name in lock.names}
        lock.run({name: trainer.train for name, (trainer, _) in runs.items()})
        patch.apply()
    result = {"steps": a.e2e_steps, "warmup_steps": a.e2e_warmup, "timed_steps": timed, "schedule_seed": seed,
              "slow_ratio": r, "slow_steps_timed": slow_timed, "slow_share_timed": share,
              "slow_steps_expected_total": sum(is_slow_step(seed, g, 0, r) for g in range(a.e2e_steps))}
    for name, (_, model) in runs.items():
        steps = lock.steps[name]
        if len(steps["wall"]) != a.e2e_steps:
            raise RuntimeError(f"{stage} {name} run: expected {a.e2e_steps} optimizer steps, got {len(steps['wall'])}")
        metrics = state_of(model).metrics
        result[name] = {c: {"seconds": sum(t[a.e2e_warmup:]), "per_step": summarise(t[a.e2e_warmup:])}
                        for c, t in steps.items()}
        result[name]["slow_steps_run_total"] = None if metrics is None else metrics.slow_steps
    med = {k: v["median"] for k, v in cell["rows"].items()}
    predicted = med["baseline"] / ((1 - share) * med["fast"] + share * med.get("slow", med["fast"]))
    measured = {c: result["baseline"][c]["seconds"] / result["dualspeed"][c]["seconds"] for c in CLOCKS}
    other = next(c for c in CLOCKS if c != a.clock)
    result.update(measured_speedup=measured[a.clock], predicted_speedup=predicted,
                  relative_error=measured[a.clock] / predicted - 1.0, **{f"measured_speedup_{other}": measured[other]})
    return result
