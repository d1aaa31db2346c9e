"""Fast/slow schedule: a pure, rank- and resume-stable function of (seed, global step, micro step)."""
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualspeed_patch.modes import _mix64, is_slow_step, step_seed, step_uniform

REPO = Path(__file__).resolve().parents[1]
GOLDEN = 0x9E3779B97F4A7C15


def schedule(seed, steps, accum, ratio):
    return [is_slow_step(seed, s, m, ratio) for s in range(steps) for m in range(accum)]


def test_mix64_is_splitmix64():
    # Published SplitMix64 outputs for state 0: the k-th output is the finaliser of k * golden.
    assert _mix64(0) == 0xE220A8397B1DCDAF
    assert _mix64(GOLDEN) == 0x6E789E6AA1B965F4
    assert _mix64(2 * GOLDEN) == 0x06C45D188009454F


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_slow_share_within_binomial_bounds(ratio):
    draws = schedule(seed=1234, steps=2500, accum=4, ratio=ratio)  # 10,000 micro-steps
    n = len(draws)
    sd = math.sqrt(n * ratio * (1 - ratio))
    assert abs(sum(draws) - n * ratio) < 4.5 * sd


def test_uniform_draws_fill_unit_interval_evenly():
    u = torch.tensor([step_uniform(7, s, 0) for s in range(10_000)])
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 35.0  # chi-square with 9 dof: p ~ 7e-5


def test_extreme_ratios():
    assert not any(schedule(0, 500, 2, 0.0))
    assert all(schedule(0, 500, 2, 1.0))


def test_identical_in_separate_processes():
    code = (
        "from dualspeed_patch.modes import is_slow_step, step_seed;"
        "print(''.join('1' if is_slow_step(99, s, m, 0.3) else '0' for s in range(300) for m in range(3)));"
        "print(step_seed(99, 5, 1))"
    )
    outs = [
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    here = "".join("1" if x else "0" for x in schedule(99, 300, 3, 0.3)) + "\n" + f"{step_seed(99, 5, 1)}\n"
    assert outs[0] == outs[1] == here


def test_resume_replays_the_same_tail():
    full = schedule(5, 400, 2, 0.1)
    tail = [is_slow_step(5, s, m, 0.1) for s in range(250, 400) for m in range(2)]
    assert tail == full[500:]


def test_independent_of_global_rng_state():
    torch.manual_seed(0)
    random.seed(0)
    a = schedule(3, 200, 4, 0.5)
    torch.manual_seed(12345)
    random.seed(12345)
    torch.rand(10)
    random.random()
    assert schedule(3, 200, 4, 0.5) == a


def test_inputs_matter_and_seeds_are_in_range():
    base = schedule(1, 300, 1, 0.5)
    assert schedule(2, 300, 1, 0.5) != base
    assert [is_slow_step(1, s, 1, 0.5) for s in range(300)] != base
    seeds = {step_seed(0, s, m) for s in range(500) for m in range(4)}
    assert len(seeds) == 2000
    assert all(0 <= x < 2**63 for x in seeds)
    torch.Generator().manual_seed(max(seeds))  # accepted by torch


def test_bad_arguments():
    with pytest.raises(ValueError, match="slow_ratio"):
        is_slow_step(0, 0, 0, 1.5)
    with pytest.raises(ValueError, match="global_step"):
        is_slow_step(0, -1, 0, 0.1)
    with pytest.raises(TypeError, match="micro_step"):
        is_slow_step(0, 0, 0.5, 0.1)
