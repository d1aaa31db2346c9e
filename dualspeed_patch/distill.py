"""Slow-mode self-distillation: answer-token positions, their hidden states, and the KL / CE losses.

Teacher (pruned visual tokens + isolator) and student (full visual tokens) see the same text but a
different number of visual tokens, so their sequences have different lengths. Their supervised answer
tokens are nevertheless the same tokens in the same order: enumerating the answer positions of each
sequence row-major (image by image, left to right) pairs them one-to-one. Only those M positions are
sent through the LM head, which avoids materialising full-sequence logits twice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # same value as llava.constants.IGNORE_INDEX; kept local so this module needs no llava


def _check_labels(labels: torch.Tensor) -> None:
    if labels.dim() != 2:
        raise ValueError(f"labels must be [batch, seq_len], got shape {tuple(labels.shape)}")


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch_idx, pos_idx) of every position whose NEXT token is supervised (labels[b, t+1] != -100),
    row-major; the hidden state at (b, t) is the one that predicts labels[b, t+1]."""
    _check_labels(labels)
    supervised_next = labels[:, 1:] != IGNORE_INDEX
    batch_idx, pos_idx = supervised_next.nonzero(as_tuple=True)
    return batch_idx, pos_idx


def gather_answer_targets(labels: torch.Tensor) -> torch.Tensor:
    """[M] next-token targets matching `answer_positions(labels)` (the shifted labels that are supervised)."""
    _check_labels(labels)
    shifted = labels[:, 1:]
    return shifted[shifted != IGNORE_INDEX]


def gather_answer_hidden(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, H] hidden states at the answer positions of `labels`, to feed the LM head (gradients flow)."""
    _check_labels(labels)
    if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden must be [batch, seq_len, hidden] matching labels {tuple(labels.shape)}, got {tuple(hidden.shape)}"
        )
    batch_idx, pos_idx = answer_positions(labels)
    return hidden[batch_idx, pos_idx]


def _zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A float32 zero that stays connected to `like`'s graph (so backward works when there is nothing to learn)."""
    return like.float().sum() * 0.0


def distill_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over the M answer tokens of KL(softmax(teacher/T) || softmax(student/T)), in fp32.

    The teacher is detached (it is a target, not trained through this term). Row m of both inputs must
    be the same answer token (see module docstring); a different M means the two sequences do not hold
    the same supervised text, most likely because one was truncated at model_max_length.
    Returns a connected zero when M == 0.
    """
    if teacher_logits.dim() != 2 or student_logits.dim() != 2:
        raise ValueError(
            f"logits must be [M, vocab], got teacher {tuple(teacher_logits.shape)}, student {tuple(student_logits.shape)}"
        )
    if teacher_logits.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"teacher has {teacher_logits.shape[0]} answer tokens but student has {student_logits.shape[0]}; "
            "they must align one-to-one (same text; check truncation at model_max_length)"
        )
    if teacher_logits.shape[1] != student_logits.shape[1]:
        raise ValueError(f"vocab sizes differ: teacher {teacher_logits.shape[1]}, student {student_logits.shape[1]}")
    t = float(temperature)
    if not t > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if student_logits.shape[0] == 0:
        return _zero_loss(student_logits)
    log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    p = log_p.exp()
    # Terms with p == 0 contribute 0 (guards 0 * -inf when the teacher masks a logit to -inf).
    pointwise = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return pointwise.sum(dim=-1).mean() * (t * t)


def shifted_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) of [M, V] logits gathered at answer positions against their
    [M] targets (`gather_answer_targets`); a connected zero when M == 0."""
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits [M, V] and targets [M], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        return _zero_loss(logits)
    return F.cross_entropy(logits.float(), targets.long())


def slow_mode_loss(ce: torch.Tensor, kl: torch.Tensor, alpha: float, n_ce: int, n_kl: int,
                   num_items_in_batch=None) -> torch.Tensor:
    """The slow-mode objective L = CE(student) + alpha * KL(teacher || student), from their per-token means.

    With `num_items_in_batch` (the Trainer's token count over accumulated micro-batches and processes) both terms
    are summed over this micro-batch's `n_ce` / `n_kl` answer tokens and divided by it, as the model's own loss is.
    """
    if num_items_in_batch is None:
        return ce + alpha * kl
    return (ce * n_ce + alpha * kl * n_kl) / num_items_in_batch
