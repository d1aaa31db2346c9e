"""Pruner registry and selectors: DivPrune against a plain per-image greedy, contract checks for every pruner."""
import math

import pytest
import torch

from dualspeed_patch.pruners import (
    available_pruners,
    divprune_select,
    gather_kept,
    get_pruner,
    mask_to_indices,
    prune_indices,
    random_select,
    register_pruner,
    uniform_select,
)
from dualspeed_patch.pruners import registry


def reference_divprune(features, keep, valid_idx):
    """Straightforward DivPrune on one image: nested loops, float64, lowest index wins ties."""
    pts = [[float(v) for v in features[i]] for i in valid_idx]
    n = len(pts)
    if keep == 0 or n == 0:
        return []
    norms = [math.sqrt(sum(v * v for v in p)) for p in pts]
    d = [[1.0 - sum(a * b for a, b in zip(pts[i], pts[j], strict=True)) / (norms[i] * norms[j]) for j in range(n)] for i in range(n)]
    best, seed = -math.inf, 0
    for i in range(n):
        nearest = min((d[i][j] for j in range(n) if j != i), default=math.inf)
        if nearest > best:
            best, seed = nearest, i
    chosen = [seed]
    while len(chosen) < min(keep, n):
        best, pick = -math.inf, None
        for i in range(n):
            if i in chosen:
                continue
            m = min(d[i][s] for s in chosen)
            if m > best:
                best, pick = m, i
        chosen.append(pick)
    return sorted(valid_idx[i] for i in chosen)


def random_case(b, n, d, seed, ragged):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    valid = torch.ones(b, n, dtype=torch.bool)
    if ragged:
        # Row 0 full, the others a random subset (non-contiguous) of at least 2 tokens.
        valid[1:] = torch.rand(b - 1, n, generator=g) < 0.7
        valid[1:, :2] = True
    return x, valid


@pytest.mark.parametrize(
    "b,n,d,keep,ragged",
    [
        (1, 12, 8, 3, False),
        (3, 24, 16, 6, False),
        (4, 40, 16, 9, True),
        (5, 30, 8, [1, 4, 30, 7, 12], True),
        (2, 64, 32, [16, 5], False),
    ],
)
def test_divprune_matches_reference_greedy(b, n, d, keep, ragged):
    x, valid = random_case(b, n, d, seed=b * 1000 + n, ragged=ragged)
    keep_arg = torch.tensor(keep) if isinstance(keep, list) else keep
    idx, mask = prune_indices("divprune", x, keep_arg, valid if ragged else None)
    keeps = keep if isinstance(keep, list) else [keep] * b
    for row in range(b):
        valid_idx = valid[row].nonzero().flatten().tolist()
        expected = reference_divprune(x[row], keeps[row], valid_idx)
        assert idx[row][mask[row]].tolist() == expected
        assert mask[row].sum().item() == min(keeps[row], len(valid_idx))


def test_divprune_hand_made_example():
    # Unit vectors at 0, 10, 90, 180, 95 degrees. The 180-degree token's nearest neighbour (95) is the
    # farthest -> seed 3; then 0 degrees (d = 2); then 90 (min distance 1 beats 95's 1 - cos 85).
    angles = torch.tensor([0.0, 10.0, 90.0, 180.0, 95.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], dim=-1).unsqueeze(0)
    assert divprune_select(x, 1).tolist() == [[3]]
    assert divprune_select(x, 2).tolist() == [[0, 3]]
    assert divprune_select(x, 3).tolist() == [[0, 2, 3]]


def test_divprune_single_valid_token_and_empty_row():
    x = torch.randn(3, 6, 4)
    valid = torch.zeros(3, 6, dtype=torch.bool)
    valid[0, 4] = True
    valid[2] = True
    idx, mask = prune_indices("divprune", x, 2, valid)
    assert idx.shape == (3, 2)
    assert idx[0].tolist() == [4, 4] and mask[0].tolist() == [True, False]
    assert idx[1].tolist() == [0, 0] and mask[1].tolist() == [False, False]
    assert mask[2].tolist() == [True, True]


@pytest.mark.parametrize("name", ["divprune", "random", "uniform"])
def test_contract_sorted_unique_in_range_and_valid(name):
    x, valid = random_case(6, 50, 12, seed=7, ragged=True)
    keep = torch.tensor([5, 1, 50, 0, 13, 20])
    idx, mask = prune_indices(name, x, keep, valid, seed=123)
    expected_counts = torch.minimum(keep, valid.sum(1))
    assert idx.dtype == torch.long and idx.shape == (6, int(expected_counts.max()))
    assert mask.sum(1).tolist() == expected_counts.tolist()
    for row in range(6):
        real = idx[row][mask[row]]
        assert real.tolist() == sorted(set(real.tolist()))  # ascending and unique
        assert bool(valid[row, real].all())
        assert bool(((idx[row] >= 0) & (idx[row] < 50)).all())
        if mask[row].any():  # padding repeats the last real index
            assert (idx[row][~mask[row]] == real[-1]).all()


@pytest.mark.parametrize("name", ["divprune", "random", "uniform"])
def test_keep_all_returns_every_token(name):
    x = torch.randn(2, 9, 5)
    idx, mask = prune_indices(name, x, 9, seed=0)
    assert idx.tolist() == [list(range(9))] * 2 and bool(mask.all())
    valid = torch.tensor([[True] * 9, [False, True, True, False, True, False, False, False, True]])
    idx, mask = prune_indices(name, x, 9, valid, seed=0)
    assert idx[1][mask[1]].tolist() == [1, 2, 4, 8]


def test_uniform_exact_indices():
    x = torch.zeros(2, 10, 3)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False
    # row 0: n=10, k=3 -> floor((i + .5) * 10 / 3) = 1, 5, 8; row 1: n=6, k=4 -> 0, 2, 3, 5.
    assert uniform_select(x, torch.tensor([3, 4]), valid).tolist() == [[1, 5, 8, 8], [0, 2, 3, 5]]
    valid2 = torch.tensor([[False, True, False, True, False, True, False, True, False, True]])
    assert uniform_select(x[:1], 2, valid2).tolist() == [[3, 7]]


def test_random_is_seeded_and_ignores_global_rng():
    x = torch.randn(4, 30, 3)
    torch.manual_seed(0)
    a = random_select(x, 7, seed=42)
    torch.manual_seed(999)
    b = random_select(x, 7, seed=42)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_select(x, 7, seed=43))
    assert not torch.equal(a[0], a[1])  # rows draw different subsets
    with pytest.raises(ValueError, match="seed"):
        random_select(x, 7)


def test_random_is_roughly_uniform():
    x = torch.zeros(1, 10, 2)
    counts = torch.zeros(10)
    for s in range(400):
        counts[random_select(x, 3, seed=s)[0]] += 1
    # each token is kept with probability 0.3: 120 expected of 400, sd ~9.2
    assert bool(((counts - 120).abs() < 46).all()), counts


def test_selection_has_no_grad_but_gather_does():
    x = torch.randn(2, 8, 4, requires_grad=True)
    idx, _ = prune_indices("divprune", x, 3)
    assert not idx.requires_grad
    kept = gather_kept(x, idx)
    assert torch.equal(kept.detach(), torch.stack([x[0, idx[0]], x[1, idx[1]]]).detach())
    kept.sum().backward()
    grad_rows = (x.grad.abs().sum(-1) > 0)
    expected = torch.zeros(2, 8, dtype=torch.bool)
    expected[0, idx[0]] = True
    expected[1, idx[1]] = True
    assert torch.equal(grad_rows, expected)


def test_mask_to_indices_padding():
    sel = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    assert mask_to_indices(sel).tolist() == [[1, 3, 3], [0, 0, 0], [0, 1, 2]]


def test_registry(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))

    @register_pruner("First3")
    def first3(features, keep, valid=None, **context):
        return torch.arange(3).expand(features.shape[0], 3)

    assert get_pruner("first3") is first3 and "first3" in available_pruners()
    idx, mask = prune_indices("first3", torch.randn(2, 5, 2), 3)
    assert idx.tolist() == [[0, 1, 2]] * 2 and bool(mask.all())
    with pytest.raises(ValueError, match="expected torch.int64"):
        prune_indices("first3", torch.randn(2, 5, 2), 2)

    other = lambda features, keep, valid=None, **c: features  # noqa: E731
    with pytest.raises(ValueError, match="already registered"):
        register_pruner("first3", other)
    register_pruner("first3", other, overwrite=True)
    assert get_pruner("first3") is other
    with pytest.raises(KeyError, match="cdpruner, divprune, fastervlm, first3, random, uniform"):
        get_pruner("nope")
    assert available_pruners() == ["cdpruner", "divprune", "fastervlm", "first3", "random", "uniform"]


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="features must be"):
        prune_indices("divprune", x[0], 2)
    with pytest.raises(ValueError, match="valid must be"):
        prune_indices("divprune", x, 2, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="keep must be >= 0"):
        prune_indices("divprune", x, -1)
    with pytest.raises(ValueError, match="keep must be an int"):
        prune_indices("divprune", x, torch.tensor([1, 2, 3]))


def test_one_registry_declares_each_methods_kind_and_context():
    """Selectors, compressors and the in-LLM FitPrune sit in one registry; each entry says its kind and the context
    its training forward must compute; a name cannot be taken by a method of another kind."""
    from dualspeed_patch.methods import COMPRESS, IN_LLM, SELECT, get_method

    kinds = {name: get_method(name).kind for name in ("divprune", "fastervlm", "cdpruner", "avgpool", "fitprune")}
    assert kinds == {"divprune": SELECT, "fastervlm": SELECT, "cdpruner": SELECT, "avgpool": COMPRESS,
                     "fitprune": IN_LLM}
    assert get_method("fastervlm").context_keys == ("cls_attention",)
    assert get_method("cdpruner").context_keys == ("relevance",)
    assert get_method("avgpool").context_keys == ("grid_side",)
    assert get_method("divprune").context_keys == () and get_method("fitprune").required_flags == ("fitprune_recipe",)
    with pytest.raises(ValueError, match="already a registered in-LLM method"):
        register_pruner("fitprune", lambda features, keep, valid=None, **c: None)
    with pytest.raises(ValueError, match="prunes inside the LLM"):
        from dualspeed_patch.pruners import reduce_tokens

        reduce_tokens("fitprune", torch.randn(1, 4, 2), 2)
