"""The upstream recipe's pieces that need no upstream LLaVA: `dualspeed_patch.upstream.setup` on a real Trainer,
its callback's saving / logging / freeze check, and the paper authors' isolator file format. (The whole flow on
upstream LLaVA and its pinned stack: scripts/check_upstream_flow.sh.)"""
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from dualspeed_patch import DualSpeedArguments
from dualspeed_patch.isolator import ISOLATOR_FILE, attach_isolator, read_isolator_file
from dualspeed_patch.upstream import UpstreamDualSpeedCallback, setup

MODEL_ARGS = SimpleNamespace(pretrain_mm_mlp_adapter=None, tune_mm_mlp_adapter=False)


@pytest.fixture
def trainer(tiny_llava, tmp_path):
    tiny_llava.requires_grad_(False)  # what upstream's pretraining does before building its trainer
    tiny_llava.get_model().mm_projector.requires_grad_(True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", seed=0)
    return Trainer(model=tiny_llava, args=args)


def setup_on(trainer, **settings):
    ds_args = DualSpeedArguments(dualspeed=True, mode_isolator_len=4, slow_mode_ratio=0.5, **settings)
    with pytest.warns(UserWarning, match="fresh isolator"):
        return setup(trainer, MODEL_ARGS, ds_args)


def test_authors_isolator_format_loads_and_a_wrong_shape_names_the_file(tiny_llava, tmp_path):
    hidden = tiny_llava.config.hidden_size
    path = tmp_path / ISOLATOR_FILE
    weight = torch.randn(4, hidden)
    torch.save({"weight": weight}, path)  # what the paper authors' code writes beside mm_projector.bin
    torch.testing.assert_close(read_isolator_file(str(path)), weight)
    torch.testing.assert_close(attach_isolator(tiny_llava, 4, str(path)).weight.float(), weight)
    with pytest.raises(ValueError, match=rf"{path}: mode isolator has shape \(4, {hidden}\), expected \(6, "):
        attach_isolator(tiny_llava, 6, str(path))
    torch.save({"weight": weight, "bias": weight[0]}, path)
    with pytest.raises(ValueError, match=rf"{path}: expected one .*found keys \['bias', 'weight'\]"):
        read_isolator_file(str(path))


def test_setup_on_the_built_trainer_trains_the_isolator_after_upstreams_freeze(trainer):
    callback = setup_on(trainer)
    assert isinstance(callback, UpstreamDualSpeedCallback)
    assert trainer.callback_handler.callbacks[0] is callback  # before reporting integrations and the printer
    isolator = trainer.model.get_model().mode_isolator
    assert isolator.weight.requires_grad
    optimizer = trainer.create_optimizer()  # what trainer.train() builds before any on_train_begin
    assert any(p is isolator.weight for group in optimizer.param_groups for p in group["params"])


def test_setup_refuses_a_model_or_a_trainer_with_an_optimizer(trainer):
    with pytest.raises(TypeError, match="built transformers Trainer"):
        setup(trainer.model, MODEL_ARGS, DualSpeedArguments(dualspeed=True))
    trainer.create_optimizer()
    with pytest.raises(RuntimeError, match="already has an optimizer"):
        setup(trainer, MODEL_ARGS, DualSpeedArguments(dualspeed=True))


def test_an_isolator_frozen_after_setup_stops_training_at_its_start(trainer):
    callback = setup_on(trainer)
    trainer.model.requires_grad_(False)
    with pytest.raises(RuntimeError, match="frozen after dualspeed_patch.upstream.setup"):
        callback.on_train_begin(trainer.args, TrainerState(), TrainerControl())


def test_callback_writes_the_isolator_at_each_save_and_at_the_end(trainer):
    callback = setup_on(trainer)
    weight = trainer.model.get_model().mode_isolator.weight
    out = trainer.args.output_dir
    callback.on_save(trainer.args, TrainerState(global_step=3), TrainerControl())
    with torch.no_grad():
        weight.mul_(2)
    callback.on_train_end(trainer.args, TrainerState(global_step=4), TrainerControl())
    torch.testing.assert_close(read_isolator_file(f"{out}/checkpoint-3/{ISOLATOR_FILE}"), weight.detach() / 2)
    saved = torch.load(f"{out}/{ISOLATOR_FILE}", weights_only=True)
    assert list(saved) == ["model.mode_isolator.weight"]
    torch.testing.assert_close(saved["model.mode_isolator.weight"], weight.detach())


def test_callback_adds_the_loss_terms_to_the_logs_and_the_log_history(trainer):
    callback = setup_on(trainer)
    callback.metrics.record_fast(torch.tensor(2.0))
    callback.metrics.record_slow({"slow_ce": torch.tensor(1.0), "kl": torch.tensor(0.5)})
    state = TrainerState(global_step=1)
    logs = {"loss": 1.5}
    state.log_history.append({**logs, "step": 1})  # what Trainer.log appends before calling on_log
    callback.on_log(trainer.args, state, TrainerControl(), logs=logs)
    want = {"dualspeed/fast_ce": 2.0, "dualspeed/slow_ce": 1.0, "dualspeed/kl": 0.5, "dualspeed/slow_share": 0.5}
    assert logs == {"loss": 1.5, **want}
    assert state.log_history[-1] == {"loss": 1.5, "step": 1, **want}
    again = {"loss": 1.0}
    callback.on_log(trainer.args, state, TrainerControl(), logs=again)  # popped: only the running share remains
    assert again == {"loss": 1.0, "dualspeed/slow_share": 0.5}


def test_dualspeed_off_adds_nothing(trainer):
    n = len(trainer.callback_handler.callbacks)
    assert setup(trainer, MODEL_ARGS, DualSpeedArguments(dualspeed=False)) is None
    assert len(trainer.callback_handler.callbacks) == n
