"""CAFA (Yin et al., MICCAI 2023) as a UDA baseline: source prototypes, inter/intra-class alignment, prototype-distance
pseudo supervision (L_p) and weak/strong intra-domain consistency (L_cf, L_cp); docs/methods.md lists the choices."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from bundle.losses.consistency import feature_mse, pseudo_label_ce
from bundle.losses.prototypes import (
    RunningPrototypes,
    class_prototypes,
    inverse_norms,
    normalized,
    prototype_similarity,
    stack_prototypes,
)
from bundle.networks.multitask_unet import SEG_CHANNELS

ALIGN_TERMS = ("intra_source", "inter", "intra_target")  # L_align = L^s_intra + L^s_inter + L^t_intra


def inter_class_loss(prototypes: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} cos(p_i, p_j) over the (C, D) prototypes (eq. 2; a zero row adds 0)."""
    rows = normalized(prototypes)
    return (rows @ rows.T).triu(1).sum()


def intra_class_loss(similarity: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 − mean over the classes that have pixels of their mean cosine similarity to their own prototype (eqs. 3-4).
    `similarity` (B, C, H, W) as `prototype_similarity`, `labels` (B, H, W), optional `mask` (B, H, W); 0 without pixels."""
    means = []
    for c in range(similarity.shape[1]):
        selected = labels == c if mask is None else (labels == c) & mask
        if bool(selected.any()):
            means.append(similarity[:, c][selected].mean())
    return 1 - torch.stack(means).mean() if means else similarity.sum() * 0


class CAFALoss(nn.Module):
    """Weighted CAFA terms of a two-view paired batch: `output`/`features` hold the source samples then the strong
    target views, `teacher_output`/`teacher_features` the weak target views (detached); `target` has "label" and
    "num_source". The last values of the terms (unweighted) are kept in `last` for logging.

    Args:
        tau: a target pixel aligns with its nearest source prototype when their cosine similarity is > τ.
        temperature: L_p's logits are cos(feature, prototype) / temperature.
        lambda_align, lambda_p, lambda_cf, lambda_cp: the weights of L_align, L_p, L_cf and L_cp (eq. 7).
        num_classes: the segmentation classes (background, mitochondria).
        prototype_momentum: 0 (the paper's eq. 1): source prototypes of the batch alone; m > 0: running means over
            batches (`RunningPrototypes`): a source batch with few mitochondria pixels moves them by 1 − m only.
            They are state: `running` belongs in the checkpoint.
    """

    def __init__(
        self,
        tau: float = 0.7,
        temperature: float = 1.0,
        lambda_align: float = 0.1,
        lambda_p: float = 0.1,
        lambda_cf: float = 0.1,
        lambda_cp: float = 0.1,
        num_classes: int = len(SEG_CHANNELS),
        prototype_momentum: float = 0.0,
    ) -> None:
        super().__init__()
        if not -1.0 <= tau < 1.0 or temperature <= 0:
            raise ValueError(f"need -1 <= tau < 1 and temperature > 0, got {tau}, {temperature}")
        self.tau, self.temperature, self.num_classes = tau, temperature, num_classes
        self.weights = dict.fromkeys(ALIGN_TERMS, lambda_align)
        self.weights.update(prototype_ce=lambda_p, feature_mse=lambda_cf, prediction_ce=lambda_cp)
        self.last: dict[str, torch.Tensor] = {}
        self.running = RunningPrototypes(prototype_momentum)

    def forward(
        self,
        output: torch.Tensor,
        features: torch.Tensor,
        teacher_output: torch.Tensor,
        teacher_features: torch.Tensor,
        target: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Σ λ · term (eq. 7 without L^s_seg, which the wrapped adaptation loss adds)."""
        terms, _ = self.terms(output, features, teacher_output, teacher_features, target)
        self.last = {name: value.detach() for name, value in terms.items()}
        return sum(self.weights[name] * value for name, value in terms.items())

    def terms(
        self,
        output: torch.Tensor,
        features: torch.Tensor,
        teacher_output: torch.Tensor,
        teacher_features: torch.Tensor,
        target: Mapping[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """(unweighted terms by name, the (C, D) source prototypes or None while a class has none)."""
        split = int(target["num_source"])
        source, strong = features[:split], features[split:]
        labels = target["label"][:split, 0].long()
        found = self.running(class_prototypes(source, labels, classes=range(self.num_classes), scale=inverse_norms(source)))  # eq. 1
        prototypes = stack_prototypes(found, fallback=source.new_zeros(self.num_classes, source.shape[1]))
        terms = {
            "intra_source": intra_class_loss(prototype_similarity(source, prototypes), labels),
            "inter": inter_class_loss(prototypes),
        }
        complete = all(p is not None for p in found.values())
        if complete:  # target terms need every class's prototype (as CAFA's released code)
            similarity = prototype_similarity(strong, prototypes)
            best, nearest = similarity.max(1)
            terms["intra_target"] = intra_class_loss(similarity, nearest, best > self.tau)
            terms["prototype_ce"] = pseudo_label_ce(similarity / self.temperature, teacher_output[:, list(SEG_CHANNELS)])
        else:
            terms["intra_target"] = terms["prototype_ce"] = strong.sum() * 0
        terms["feature_mse"] = feature_mse(strong, teacher_features)
        terms["prediction_ce"] = pseudo_label_ce(output[split:, list(SEG_CHANNELS)], teacher_output[:, list(SEG_CHANNELS)])
        return terms, (prototypes if complete else None)
