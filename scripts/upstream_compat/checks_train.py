"""Checks on training with the patch on the upstream model: fast and slow steps, the slow step's loss against
upstream's, and two optimizer steps through the transformers Trainer with `DualSpeedCallback`.

Each check takes the shared `Context`, returns a short detail string, or raises (AssertionError on a mismatch).
"""
import math
import tempfile

import torch
import transformers

import dualspeed_patch.patch as patch
from dualspeed_patch import step as ds_step
from dualspeed_patch.callback import DualSpeedCallback, DualSpeedMetrics
from dualspeed_patch.isolator import get_isolator
from dualspeed_patch.modes import ModeSchedule
from dualspeed_patch.state import state_of

from .context import Context
from .helpers import fast_and_slow_steps


def train_fast(ctx: Context) -> str:
    """Proves a training forward at a fast step of the schedule gives a finite loss whose backward reaches both
    the mode isolator and the projector. Records the first slow step for `train_slow`."""
    model, b = ctx.model, ctx.batch
    state_of(model).schedule = ModeSchedule(seed=0, slow_ratio=0.5)
    fast, slow = fast_and_slow_steps(state_of(model).schedule)
    ctx.slow_step = slow
    model.train()
    model.zero_grad(set_to_none=True)
    state_of(model).schedule.at(fast)
    out = model(**b)
    assert torch.isfinite(out.loss), f"fast loss {out.loss}"
    out.loss.backward()
    iso_grad = get_isolator(model).weight.grad
    assert iso_grad is not None and iso_grad.abs().sum() > 0, "isolator got no gradient in fast mode"
    proj_grad = model.get_model().mm_projector[0].weight.grad
    assert proj_grad is not None and proj_grad.abs().sum() > 0, "projector got no gradient in fast mode"
    return f"step {fast}: loss {out.loss.item():.4f}, |grad isolator| {iso_grad.abs().sum().item():.3g}"


def train_slow(ctx: Context) -> str:
    """Proves a training forward at a slow step runs a no-grad teacher pass and a student pass with grad, gives a
    finite loss whose backward reaches the projector, and leaves the isolator without gradient."""
    model, b = ctx.model, ctx.batch
    model.train()
    model.zero_grad(set_to_none=True)
    state_of(model).schedule.at(ctx.slow_step)
    seen = []
    hook = model.get_model().register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state.requires_grad))
    try:
        out = model(**b)
    finally:
        hook.remove()
    assert torch.isfinite(out.loss), f"slow loss {out.loss}"
    assert sorted(seen) == [False, True], f"expected a no-grad teacher and a student pass, saw {seen}"
    out.loss.backward()
    proj_grad = model.get_model().mm_projector[0].weight.grad
    assert proj_grad is not None and proj_grad.abs().sum() > 0, "projector got no gradient in slow mode"
    assert get_isolator(model).weight.grad is None, "isolator got a gradient in slow mode (teacher has no graph)"
    return f"step {ctx.slow_step}: loss {out.loss.item():.4f} (teacher no-grad, student with grad)"


def slow_student_matches_upstream(ctx: Context) -> str:
    """Proves the slow step's loss with distillation off (alpha = 0) is exactly upstream's own forward loss (patch
    removed), and its KL term is non-negative."""
    arch, model, b = ctx.arch, ctx.model.eval(), ctx.batch
    args = state_of(model).args
    alpha = args.distill_alpha
    args.distill_alpha = 0.0
    try:
        loss, metrics = ds_step.slow_step(model, state_of(model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
    finally:
        args.distill_alpha = alpha
    patch.remove(arch)
    try:
        with torch.no_grad():
            plain = model(**b).loss  # upstream's own forward and input builder
    finally:
        patch.apply(arch)
    assert torch.allclose(loss.detach(), plain, rtol=1e-5, atol=1e-6), f"slow CE {loss.item()} != upstream {plain.item()}"
    assert metrics["kl"].item() >= 0, f"negative KL {metrics['kl']}"
    return f"alpha=0 slow loss {loss.item():.6f} == upstream CE {plain.item():.6f}; KL {metrics['kl'].item():.3g}"


def trainer_steps(ctx: Context) -> str:
    """Proves upstream's stack's `transformers.Trainer` drives the schedule: with 2 steps x 2 micro-steps each
    forward sees the right (global step, micro-step), `DualSpeedMetrics` counts the fast/slow split the schedule
    says, and the training loss is finite."""
    model, b = ctx.model.train(), ctx.batch
    schedule, metrics = ModeSchedule(seed=3, slow_ratio=0.5), DualSpeedMetrics()
    state = state_of(model)
    state.schedule, state.metrics = schedule, metrics
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append((schedule.global_step, schedule.micro_step)))
    rows = [{k: v[i] for k, v in b.items()} for i in range(2)]
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
            learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
            use_cpu=True, dataloader_num_workers=0, seed=0)
        collate = lambda items: {k: torch.stack([it[k] for it in items]) for k in items[0]}  # noqa: E731
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows * 4, data_collator=collate,
                                       callbacks=[DualSpeedCallback(schedule, metrics)])
        try:
            result = trainer.train()
        finally:
            hook.remove()
    expected = [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert seen == expected, f"schedule positions per micro-step {seen}, expected {expected}"
    slow = sum(ModeSchedule(3, 0.5).at(g, m).is_slow() for g, m in expected)
    assert (metrics.fast_steps, metrics.slow_steps) == (4 - slow, slow), \
        f"recorded fast/slow {metrics.fast_steps}/{metrics.slow_steps}, schedule says {4 - slow}/{slow}"
    assert math.isfinite(result.training_loss), f"training loss {result.training_loss}"
    return f"micro-steps {seen}, {slow} slow; training loss {result.training_loss:.4f}"
