"""Class-focused pixel-to-prototype contrastive alignment (paper III-D, eqs. 4-7) and its Table IV ablations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.losses.prototypes import confident, gather_pixels, inverse_norms, masked_mean, normalized, sample_pixels
from bundle.networks.multitask_unet import SEG_CHANNELS

BACKGROUND, FOREGROUND = 0, 1
# contrast_mode values (paper Table IV): prototypes of each class and where the queries come from
CONTRAST_MODES = ("none", "source_only", "target_only", "both_separate", "background_focused", "foreground_focused")
SOURCE_FG, SOURCE_BG = "source_fg", "source_bg"  # confident source pixels (eq. 7, k = s)
TARGET_LABEL_FG = "target_label_fg"  # confident pixels of pseudo-label instances holding a ground-truth point (k = t)
TARGET_PL_FG, TARGET_PL_BG = "target_pl_fg", "target_pl_bg"  # all target pixels of pseudo-label 1 / 0 (μ_pl)
TARGET_BG_CLUSTERS, SOURCE_BG_CLUSTERS = "target_bg_kmeans", "source_bg_kmeans"  # bank buffers clustered by k-means
# (query domain, foreground prototypes, background prototypes); a "clusters:" entry names a k-means buffer
MODE_PROTOTYPES: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "none": [],
    "source_only": [("source", (SOURCE_FG,), (SOURCE_BG, "clusters:" + SOURCE_BG_CLUSTERS))],
    "target_only": [("target", (TARGET_LABEL_FG, TARGET_PL_FG), (TARGET_PL_BG, "clusters:" + TARGET_BG_CLUSTERS))],
    "both_separate": [
        ("source", (SOURCE_FG,), (SOURCE_BG, "clusters:" + SOURCE_BG_CLUSTERS)),
        ("target", (TARGET_LABEL_FG, TARGET_PL_FG), (TARGET_PL_BG, "clusters:" + TARGET_BG_CLUSTERS)),
    ],
    "background_focused": [
        ("target", (TARGET_LABEL_FG, TARGET_PL_FG), (SOURCE_BG, TARGET_PL_BG, "clusters:" + TARGET_BG_CLUSTERS))
    ],
    "foreground_focused": [
        ("target", (SOURCE_FG, TARGET_LABEL_FG, TARGET_PL_FG), (TARGET_PL_BG, "clusters:" + TARGET_BG_CLUSTERS))
    ],
}


def sample_queries(
    labels: torch.Tensor, probability: torch.Tensor, cls: int, delta_easy: float = 0.95, delta_hard: float = 0.80, num: int = 1024
) -> torch.Tensor:
    """Flat (b, y, x) indices of up to `num` queries of class `cls` (eqs. 5-6): label == cls and p_cls > δe (easy)
    or p_cls < δh (hard), half of each, the other kind filling a shortfall; drawn with torch's global RNG."""
    labels = labels.reshape(probability.shape[0], *probability.shape[-2:])
    is_class, p = labels == cls, probability[:, cls]
    easy, hard = is_class & (p > delta_easy), is_class & (p < delta_hard)
    num_easy_found, num_hard_found = int(easy.sum()), int(hard.sum())
    num_hard = min(num_hard_found, num - min(num_easy_found, num // 2))
    num_easy = min(num_easy_found, num - num_hard)
    return torch.cat([sample_pixels(easy, num_easy), sample_pixels(hard, num_hard)])


def info_nce(queries: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Per-query −log( e^{q·μ̄/τ} / (e^{q·μ̄/τ} + Σ_k e^{q·μ_k/τ}) ) (eq. 4), shape (N,)."""
    logits = queries @ positive.reshape(-1, 1)
    if negatives is not None and len(negatives):
        logits = torch.cat([logits, queries @ negatives.T], dim=1)
    return -F.log_softmax(logits / temperature, dim=1)[:, 0]


def weighted_mean_prototype(prototypes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Normalised weighted mean μ̄ of (M, D) normalised prototypes."""
    return normalized((weights.reshape(-1, 1) * prototypes).sum(0) / weights.sum())


def class_contrast(
    queries: Sequence[torch.Tensor],
    prototypes: Sequence[torch.Tensor | None],
    weights: Sequence[torch.Tensor | None],
    temperature: float,
) -> torch.Tensor:
    """Eq. 4 for C classes: (1/C) Σ_c mean over the class-c queries of InfoNCE against μ̄^c (positive) and every
    prototype of the other classes (negatives). `queries[c]` (N_c, D) and `prototypes[c]` (K_c, D) are normalised
    rows (prototypes None when unknown); a class without queries or prototype adds 0."""
    total = sum(q[:0].sum() for q in queries)  # 0, on the queries' graph when nothing contributes
    for c, (rows, own) in enumerate(zip(queries, prototypes)):
        if own is None or len(rows) == 0:
            continue
        others = [p for k, p in enumerate(prototypes) if k != c and p is not None]
        negatives = torch.cat(others) if others else None
        total = total + info_nce(rows, weighted_mean_prototype(own, weights[c]), negatives, temperature).mean()
    return total / len(prototypes)


class ClassFocusedContrastLoss(nn.Module):
    """L_contra (eq. 4) of a paired batch: queries sampled by `sample_queries`, prototypes from `bank`, which this
    loss updates with the batch's detached masked means (eq. 7) before using them; `mode` picks a Table IV row."""

    def __init__(
        self,
        bank,
        mode: str = "foreground_focused",
        temperature: float = 0.5,
        delta_easy: float = 0.95,
        delta_hard: float = 0.80,
        num_queries: int = 1024,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if mode not in CONTRAST_MODES:
            raise ValueError(f"unknown contrast_mode {mode!r}; use one of {', '.join(CONTRAST_MODES)}")
        if not 0.0 < delta_hard <= delta_easy < 1.0:
            raise ValueError(f"need 0 < delta_hard <= delta_easy < 1, got {delta_hard}, {delta_easy}")
        self.bank, self.mode, self.temperature = bank, mode, temperature
        self.delta_easy, self.delta_hard, self.num_queries = delta_easy, delta_hard, num_queries
        self.weights = dict(weights or {})  # prototype name (or k-means buffer name) -> weight in μ̄, default 1

    def forward(self, output: torch.Tensor, features: torch.Tensor, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`output` (B, 3, H, W) network output, `features` (B, D, H, W) decoder features z; `target` as AdaptationLoss
        gets it ("label", "num_source", optionally "point_mask")."""
        split = int(target["num_source"])
        probability = torch.softmax(output[:, list(SEG_CHANNELS)].detach(), dim=1)
        labels = target["label"][:, 0]
        points = target.get("point_mask")
        points = torch.zeros_like(labels, dtype=torch.bool) if points is None else points[:, 0] > 0
        domains = {"source": slice(0, split), "target": slice(split, len(features))}
        with torch.no_grad():
            self._update_bank(features.detach(), probability, labels, points, domains)
        pixels = features.shape[-2] * features.shape[-1]
        terms, indices = [], []  # per used domain: (prototypes, weights); per (domain, class): global pixel indices
        for domain, fg_names, bg_names in MODE_PROTOTYPES[self.mode]:
            part = domains[domain]
            terms.append(tuple(zip(*(self._prototype_set(names, features.device) for names in (bg_names, fg_names)))))
            indices += [
                part.start * pixels
                + sample_queries(labels[part], probability[part], c, self.delta_easy, self.delta_hard, self.num_queries)
                for c in (BACKGROUND, FOREGROUND)
            ]
        # one gather for all queries: only the sampled pixels are normalised and get a gradient
        index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=features.device)
        rows = F.normalize(gather_pixels(features, index), dim=1)
        queries = rows.split([len(i) for i in indices])
        loss = rows[:0].sum()  # 0 on the features' graph, whatever contributes below
        for k, (prototypes, weights) in enumerate(terms):
            loss = loss + class_contrast(queries[2 * k : 2 * k + 2], prototypes, weights, self.temperature)
            self._remember(prototypes, weights)
        self.bank.last["loss"] = loss.detach()
        return loss

    def _update_bank(self, z: torch.Tensor, probability: torch.Tensor, labels: torch.Tensor, points: torch.Tensor, domains: dict) -> None:
        """Batch masked means (eq. 7) of the normalised features z/||z|| into the bank's running means; random
        background pixels into its k-means buffers (only those the mode uses)."""
        src, tgt = domains["source"], domains["target"]
        scale = inverse_norms(z)  # means of normalised features without normalising the whole map
        mean = lambda part, mask: masked_mean(z[part], mask, scale[part])  # noqa: E731
        means, background = {}, {}
        if src.stop > src.start:
            means[SOURCE_FG] = mean(src, confident(labels[src], probability[src], FOREGROUND, self.delta_easy))
            means[SOURCE_BG] = mean(src, confident(labels[src], probability[src], BACKGROUND, self.delta_easy))
            background[SOURCE_BG_CLUSTERS] = src
        if tgt.stop > tgt.start:
            fg_confident = confident(labels[tgt], probability[tgt], FOREGROUND, self.delta_easy)
            means[TARGET_LABEL_FG] = mean(tgt, fg_confident & points[tgt])
            means[TARGET_PL_FG] = mean(tgt, labels[tgt] == FOREGROUND)
            means[TARGET_PL_BG] = mean(tgt, labels[tgt] == BACKGROUND)
            background[TARGET_BG_CLUSTERS] = tgt
        self.bank.update(means)
        needed = {n.split(":", 1)[1] for _, fg, bg in MODE_PROTOTYPES[self.mode] for n in fg + bg if n.startswith("clusters:")}
        for name in needed & background.keys():
            part = background[name]
            index = sample_pixels(labels[part] == BACKGROUND, self.bank.buffer_per_iteration)
            self.bank.push(name, F.normalize(gather_pixels(z[part], index), dim=1))

    def _prototype_set(self, names: Sequence[str], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(M, D) normalised prototypes that exist among `names` and their μ̄ weights."""
        rows, weights = [], []
        for name in names:
            if name.startswith("clusters:"):
                name = name.split(":", 1)[1]
                found = self.bank.clusters.get(name)
            else:
                found = self.bank.get(name)
            if found is not None:
                found = found.reshape(-1, found.shape[-1]).to(device)
                rows.append(normalized(found))
                weights.append(torch.full((len(found),), float(self.weights.get(name, 1.0)), device=device))
        return (torch.cat(rows), torch.cat(weights)) if rows else (None, None)

    def _remember(self, prototypes: Sequence[torch.Tensor | None], weights: Sequence[torch.Tensor | None]) -> None:
        """Class means of the last call, for the bank's similarity logs."""
        for key, own, w in zip(("bg", "fg"), prototypes, weights):
            if own is not None:
                self.bank.last[key] = weighted_mean_prototype(own, w).detach()


class ContrastiveAdaptationLoss(nn.Module):
    """`loss`(output, target) + λ2 · `contrast`(output, features, target) (eq. 8); `pred` is FeatureInferer's
    (output, features) tuple, or a plain output tensor (then only `loss`)."""

    def __init__(self, loss: nn.Module, contrast: nn.Module, lambda_contrast: float = 5e-3) -> None:
        super().__init__()
        self.loss, self.contrast, self.lambda_contrast = loss, contrast, lambda_contrast
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Adaptation loss plus the weighted contrastive term; `last`: the adaptation loss's terms and "contrast"."""
        output, features = pred if isinstance(pred, (tuple, list)) else (pred, None)
        base = self.loss(output, target)
        self.last = dict(getattr(self.loss, "last", {}))
        if features is None or self.lambda_contrast == 0 or getattr(self.contrast, "mode", None) == "none":
            return base
        contrast = self.contrast(output, features, target)
        self.last["contrast"] = contrast.detach()
        return base + self.lambda_contrast * contrast
