"""DualSpeedArguments (validation, config round trip, CLI parsing) and the kept-token count rule."""
import dataclasses

import pytest
import torch
import transformers

from dualspeed_patch.config import DualSpeedArguments, kept_tokens, kept_tokens_tensor


def test_defaults_follow_the_paper():
    a = DualSpeedArguments()
    assert (a.dualspeed, a.pruning_ratio, a.slow_mode_ratio, a.vtp_method) == (False, 0.9, 0.1, "divprune")
    assert (a.mode_isolator_len, a.distill_temperature, a.distill_alpha) == (4, 1.0, 1.0)
    assert a.mode_isolator_path is None and a.slow_mode_in_pretraining is False
    assert all(f.metadata.get("help") for f in dataclasses.fields(a))


@pytest.mark.parametrize(
    "field,value",
    [
        ("pruning_ratio", 1.0),
        ("pruning_ratio", -0.1),
        ("slow_mode_ratio", 1.01),
        ("slow_mode_ratio", -0.5),
        ("mode_isolator_len", -1),
        ("mode_isolator_len", 2.5),
        ("distill_temperature", 0.0),
        ("distill_alpha", -1.0),
        ("vtp_method", "no_such_pruner"),
    ],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DualSpeedArguments(**{field: value})


def test_edge_values_accepted():
    DualSpeedArguments(pruning_ratio=0.0, slow_mode_ratio=0.0, mode_isolator_len=0, distill_alpha=0.0)
    DualSpeedArguments(slow_mode_ratio=1.0, vtp_method="Uniform")


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="known: cdpruner, divprune, fastervlm, random, uniform"):
        DualSpeedArguments(vtp_method="fastvlm")


def test_config_round_trip_dict_and_pretrained_config():
    a = DualSpeedArguments(dualspeed=True, pruning_ratio=0.75, slow_mode_ratio=0.2, vtp_method="random",
                           mode_isolator_len=2, distill_temperature=2.0, distill_alpha=0.5,
                           mode_isolator_path="/x/iso.bin", slow_mode_in_pretraining=True, layer_skip_ratio=0.25,
                           layer_skip_schedule="uniform")
    d = a.to_config_dict()
    assert d == {
        "dualspeed": True, "dualspeed_pruning_ratio": 0.75, "dualspeed_slow_mode_ratio": 0.2,
        "dualspeed_vtp_method": "random", "dualspeed_mode_isolator_len": 2, "dualspeed_distill_temperature": 2.0,
        "dualspeed_distill_alpha": 0.5, "dualspeed_mode_isolator_path": "/x/iso.bin",
        "dualspeed_slow_mode_in_pretraining": True, "dualspeed_layer_skip_ratio": 0.25,
        "dualspeed_layer_skip_schedule": "uniform", "dualspeed_fitprune_recipe": None, "dualspeed_clip_text_tower": None,
    }
    assert DualSpeedArguments.from_config(d) == a
    cfg = transformers.PretrainedConfig(**d)
    assert DualSpeedArguments.from_config(cfg) == a
    reloaded = transformers.PretrainedConfig.from_dict(cfg.to_dict())
    assert DualSpeedArguments.from_config(reloaded) == a


def test_plain_config_gives_defaults():
    assert DualSpeedArguments.from_config(transformers.PretrainedConfig()) == DualSpeedArguments()
    assert DualSpeedArguments.from_config({"dualspeed": True, "dualspeed_mode_isolator_path": None}) == \
        DualSpeedArguments(dualspeed=True)
    with pytest.raises(ValueError, match="pruning_ratio"):
        DualSpeedArguments.from_config({"dualspeed_pruning_ratio": 1.5})


def test_parsed_with_training_arguments(tmp_path):
    parser = transformers.HfArgumentParser((transformers.TrainingArguments, DualSpeedArguments))
    train_args, ds = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--dualspeed", "True", "--pruning_ratio", "0.8",
         "--vtp_method", "uniform", "--mode_isolator_len", "8", "--mode_isolator_path", "iso.bin"]
    )
    assert (ds.dualspeed, ds.pruning_ratio, ds.vtp_method, ds.mode_isolator_len) == (True, 0.8, "uniform", 8)
    assert ds.mode_isolator_path == "iso.bin" and ds.slow_mode_ratio == 0.1
    assert str(train_args.output_dir) == str(tmp_path)


def test_parsed_with_llava_dataclasses(tmp_path):
    arguments = pytest.importorskip("llava.train.arguments")
    ours = {f.name for f in dataclasses.fields(DualSpeedArguments)}
    for cls in (arguments.ModelArguments, arguments.DataArguments, arguments.TrainingArguments):
        assert ours.isdisjoint(f.name for f in dataclasses.fields(cls)), cls.__name__
    parser = transformers.HfArgumentParser((arguments.TrainingArguments, DualSpeedArguments))
    *_, ds = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--lora_alpha", "256", "--distill_alpha", "0.5", "--slow_mode_ratio", "0.2"]
    )
    assert (ds.distill_alpha, ds.slow_mode_ratio) == (0.5, 0.2)


def test_kept_tokens_values():
    assert kept_tokens(576, 0.9) == 58  # 57.6 rounds half up (the paper's int() would give 57)
    assert kept_tokens(15, 0.9) == 2  # exactly 1.5, although (1 - 0.9) * 15 == 1.4999999999999996 in floats
    assert kept_tokens(5, 0.9) == 1  # 0.5 -> 1
    assert kept_tokens(4, 0.9) == 1  # 0.4 -> 0, floored to one token
    assert kept_tokens(2880, 0.9) == 288
    assert kept_tokens(576, 0.0) == 576
    assert kept_tokens(576, 0.75) == 144
    assert kept_tokens(1, 0.99) == 1
    assert kept_tokens(0, 0.9) == 0
    with pytest.raises(ValueError, match="pruning_ratio"):
        kept_tokens(576, 1.0)
    with pytest.raises(ValueError, match="n "):
        kept_tokens(-3, 0.5)


def test_kept_tokens_tensor_matches_scalar():
    n = torch.arange(0, 3000)
    for p in (0.0, 0.5, 0.75, 0.9, 0.95, 0.333):
        got = kept_tokens_tensor(n, p)
        assert got.dtype == torch.long
        assert got.tolist() == [kept_tokens(int(v), p) for v in n]
    with pytest.raises(TypeError, match="integer tensor"):
        kept_tokens_tensor(torch.tensor([1.0]), 0.5)
