"""Weak/strong-view consistency losses of the UDA baselines (CAFA, R4MITO) and the loss that adds them."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import permutations

import torch
import torch.nn as nn
import torch.nn.functional as F


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student features and the detached teacher features (CAFA L_cf, eq. 6)."""
    return F.mse_loss(student, teacher.detach())


def pseudo_label_ce(student_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, C, H, W) student logits against the hard pseudo-label argmax of the teacher's scores
    (CAFA L_cp and L_p, R4MITO L_reg and L_pro)."""
    return F.cross_entropy(student_logits, teacher_scores.detach().argmax(1))


def kl_consistency(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(teacher ‖ student) summed over the distribution axis `dim`, averaged over every other position."""
    teacher_log_probs = teacher_log_probs.detach()
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim).mean()


def permutation_table(k: int, device: torch.device | None = None) -> torch.Tensor:
    """(k!, k) every ordering of k items, in itertools.permutations order."""
    return torch.tensor(list(permutations(range(k))), dtype=torch.long, device=device)


def suffix_sets(k: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(k!, k, k) 0/1: [p, i, j] = 1 when item j stands at position i or later in the p-th ordering."""
    orders = permutation_table(k, device)
    position = torch.empty_like(orders).scatter_(1, orders, torch.arange(k, device=device).expand_as(orders))
    return (position[:, None, :] >= torch.arange(k, device=device)[None, :, None]).to(dtype)


def plackett_luce_log_probs(log_scores: torch.Tensor) -> torch.Tensor:
    """(..., k!) log-probabilities of every ordering of the k items on the last axis under the Plackett–Luce model
    with positive scores exp(log_scores): P(π) = Π_i s_π(i) / Σ_{j ≥ i} s_π(j) (R4MITO eq. 12). Every ordering has
    the same numerator Π_j s_j, so only the k!·k denominators differ: one matrix product with `suffix_sets`."""
    k = log_scores.shape[-1]
    shifted = log_scores - log_scores.amax(-1, keepdim=True).detach()  # scale free: exp stays in (0, 1]
    sets = suffix_sets(k, log_scores.device, log_scores.dtype).reshape(-1, k)  # (k!·k, k)
    denominators = (shifted.exp() @ sets.T).unflatten(-1, (-1, k))  # (..., k!, k)
    return shifted.sum(-1, keepdim=True) - denominators.log().sum(-1)


def rank_consistency(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, top: int = 4, dim: int = 1) -> torch.Tensor:
    """R4MITO L_rank (eq. 14): per position, the teacher's `top` most likely items along `dim`; KL(teacher ‖ student)
    of the Plackett–Luce distributions over the top! orderings of those items, averaged over positions."""
    if student_log_probs.shape[dim] < top:
        raise ValueError(f"rank consistency needs at least top={top} items, got {student_log_probs.shape[dim]}")
    teacher_log_probs = teacher_log_probs.detach()
    index = teacher_log_probs.topk(top, dim=dim).indices
    student = plackett_luce_log_probs(student_log_probs.gather(dim, index).movedim(dim, -1))
    teacher = plackett_luce_log_probs(teacher_log_probs.gather(dim, index).movedim(dim, -1))
    return kl_consistency(student, teacher, dim=-1)


class TwoViewAdaptationLoss(nn.Module):
    """`loss`(output, target) + `consistency`(output, features, teacher_output, teacher_features, target), where `pred`
    is FeatureInferer's 4-tuple with a teacher view; a plain tensor or (output, features) gives `loss` alone."""

    def __init__(self, loss: nn.Module, consistency: nn.Module) -> None:
        super().__init__()
        self.loss, self.consistency = loss, consistency
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor | tuple[torch.Tensor, ...], target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Supervised (source) loss plus the baseline's weighted terms; `last`: the terms of both, unweighted."""
        if not isinstance(pred, (tuple, list)):
            pred = (pred,)
        supervised = self.loss(pred[0], target)
        self.last = dict(getattr(self.loss, "last", {}))
        if len(pred) != 4:
            return supervised
        output, features, teacher_output, teacher_features = pred
        consistency = self.consistency(output, features, teacher_output, teacher_features, target)
        self.last.update(getattr(self.consistency, "last", {}))
        return supervised + consistency
