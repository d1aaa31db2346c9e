"""Self-distillation pieces: answer positions, gathered hidden states, KL and CE against hand computations."""
import math

import pytest
import torch

from dualspeed_patch.distill import (
    IGNORE_INDEX,
    answer_positions,
    distill_kl,
    gather_answer_hidden,
    gather_answer_targets,
    shifted_ce,
)

X = IGNORE_INDEX
LABELS = torch.tensor(
    [
        [X, X, X, 7, 8, X, X, 9],
        [X, 5, X, X, X, X, X, X],
        [X, X, X, X, X, X, X, X],
        [3, X, 4, 4, X, X, X, X],
    ]
)


def hand_kl(teacher, student, t):
    """Explicit sum of p * log(p / q) per row, averaged over rows, times t^2."""
    total = 0.0
    for trow, srow in zip(teacher.tolist(), student.tolist(), strict=True):
        zt = sum(math.exp(v / t) for v in trow)
        zs = sum(math.exp(v / t) for v in srow)
        p = [math.exp(v / t) / zt for v in trow]
        q = [math.exp(v / t) / zs for v in srow]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total / len(teacher) * t * t


def test_answer_positions_exact():
    b, t = answer_positions(LABELS)
    # (b, t) predicts labels[b, t+1]; labels[3, 0] = 3 is never a target (nothing precedes it).
    assert b.tolist() == [0, 0, 0, 1, 3, 3]
    assert t.tolist() == [2, 3, 6, 0, 1, 2]
    assert gather_answer_targets(LABELS).tolist() == [7, 8, 9, 5, 4, 4]


def test_gather_answer_hidden_and_alignment_across_lengths():
    hidden = torch.arange(4 * 8 * 2, dtype=torch.float32).view(4, 8, 2)
    got = gather_answer_hidden(hidden, LABELS)
    assert got[:, 0].tolist() == [4.0, 6.0, 12.0, 16.0, 50.0, 52.0]  # (b*8 + t) * 2
    # A student with 3 more visual tokens after the first token (as LLaVA splices images after BOS) sees the
    # same targets in the same order, each 3 positions later.
    student = torch.cat([LABELS[:, :1], torch.full((4, 3), X), LABELS[:, 1:]], dim=1)
    assert gather_answer_targets(student).tolist() == gather_answer_targets(LABELS).tolist()
    assert answer_positions(student)[1].tolist() == [5, 6, 9, 3, 4, 5]
    with pytest.raises(ValueError, match="hidden must be"):
        gather_answer_hidden(hidden[:, :7], LABELS)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_kl_matches_hand_computation(t):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 7, generator=g) * 2
    student = torch.randn(5, 7, generator=g) * 2
    got = distill_kl(teacher, student, t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(hand_kl(teacher, student, t), rel=1e-5)


def test_kl_fixed_numbers():
    teacher = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    student = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    # 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2
    assert distill_kl(teacher, student, 1.0).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)


def test_kl_zero_when_equal_and_empty():
    logits = torch.randn(4, 11)
    assert distill_kl(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(0, 11, requires_grad=True)
    loss = distill_kl(torch.randn(0, 11), student, 1.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert student.grad.shape == (0, 11)


def test_kl_gradient_reaches_student_only():
    teacher = torch.randn(3, 6, requires_grad=True)
    student = torch.randn(3, 6, requires_grad=True)
    distill_kl(teacher, student, 2.0).backward()
    assert teacher.grad is None
    # d/ds of T^2 * mean KL = T * (q - p) / M
    p = torch.softmax(teacher.detach() / 2, -1)
    q = torch.softmax(student.detach() / 2, -1)
    assert torch.allclose(student.grad, 2.0 * (q - p) / 3, atol=1e-6)


def test_kl_bf16_inputs_computed_in_fp32():
    teacher = torch.randn(4, 9).bfloat16()
    student = torch.randn(4, 9).bfloat16()
    got = distill_kl(teacher, student, 1.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(hand_kl(teacher.float(), student.float(), 1.0), rel=1e-5)


def test_kl_mismatched_answer_counts():
    with pytest.raises(ValueError, match="teacher has 3 answer tokens but student has 2"):
        distill_kl(torch.randn(3, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="temperature"):
        distill_kl(torch.randn(2, 5), torch.randn(2, 5), 0.0)


def test_shifted_ce():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    targets = torch.tensor([0, 2])
    assert shifted_ce(logits, targets).item() == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-6)
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = shifted_ce(empty, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
