"""R4MITO (Chen, Sun et al., AAAI 2025) as a UDA baseline: CAFA's terms plus reliable prototype pseudo-labels (L_pro),
correlation-wise (agent) consistency and rank-aware (Plackett–Luce) consistency; docs/methods.md lists the choices."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from bundle.losses.cafa import CAFALoss
from bundle.losses.consistency import kl_consistency, pseudo_label_ce, rank_consistency
from bundle.losses.prototypes import class_prototypes, inverse_norms, normalized, prototype_similarity, stack_prototypes
from bundle.networks.multitask_unet import SEG_CHANNELS

AGENT_SCORES = ("norm", "random")  # top-K by feature L2 norm (the default), or K random pixels (R4MITO Table 5)
PRO_MODES = ("pseudo_label", "feature_prediction")


def reliable_prototypes(features: torch.Tensor, source_prototypes: torch.Tensor, tau: float = 0.7) -> torch.Tensor:
    """(C, D) target prototypes: means of the normalised target features whose nearest source prototype has cosine
    similarity > τ, per class; a class without such pixels keeps its (normalised) source prototype."""
    similarity = prototype_similarity(features, source_prototypes)  # eq. 5, c_k = p_k^s · F^T on unit vectors
    best, nearest = similarity.max(1)
    found = class_prototypes(features, nearest, best > tau, classes=range(len(source_prototypes)), scale=inverse_norms(features))
    return stack_prototypes(found, fallback=normalized(source_prototypes))


def select_agents(features: torch.Tensor, num: int, score: str = "norm") -> torch.Tensor:
    """(B, K) flat pixel indices of K = min(num, H·W) agents per image: top-K by feature norm, or random."""
    if score not in AGENT_SCORES:
        raise ValueError(f"unknown agent score {score!r}; use one of {', '.join(AGENT_SCORES)}")
    flat = features.flatten(2)  # (B, D, N)
    num = min(num, flat.shape[-1])
    if score == "norm":
        return flat.norm(dim=1).topk(num, dim=1).indices
    return torch.stack([torch.randperm(flat.shape[-1])[:num] for _ in range(len(flat))]).to(features.device)


def gather_agents(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, K, D) feature rows of (B, D, H, W) `features` at the (B, K) flat pixel indices."""
    flat = features.flatten(2)
    return flat.gather(2, index[:, None].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def agent_log_correlation(features: torch.Tensor, agents: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """(B, K, H, W) log of each pixel's agent-level correlation: softmax over the K agents of cos(pixel, agent) / T."""
    cosine = torch.einsum("bdhw,bkd->bkhw", F.normalize(features, dim=1), F.normalize(agents, dim=-1))
    return F.log_softmax(cosine / temperature, dim=1)


class R4MITOLoss(CAFALoss):
    """CAFALoss plus λ_pro L_pro, λ_corr L_corr and λ_rank L_rank on the same two-view batch (eq. 15)."""

    def __init__(
        self,
        tau: float = 0.7,
        temperature: float = 1.0,
        lambda_align: float = 0.1,
        lambda_p: float = 0.1,
        lambda_cf: float = 0.1,
        lambda_cp: float = 0.1,
        lambda_pro: float = 0.1,
        lambda_corr: float = 0.1,
        lambda_rank: float = 0.1,
        num_agents: int = 128,
        top_ranks: int = 4,
        agent_temperature: float = 0.1,
        agent_score: str = "norm",
        pro_mode: str = "pseudo_label",
        num_classes: int = len(SEG_CHANNELS),
        prototype_momentum: float = 0.0,
    ) -> None:
        super().__init__(tau, temperature, lambda_align, lambda_p, lambda_cf, lambda_cp, num_classes, prototype_momentum)
        if agent_score not in AGENT_SCORES or pro_mode not in PRO_MODES:
            raise ValueError(f"agent_score must be one of {AGENT_SCORES} and pro_mode one of {PRO_MODES}")
        if num_agents < top_ranks or agent_temperature <= 0:
            raise ValueError(f"need num_agents >= top_ranks, agent_temperature > 0: {num_agents}, {top_ranks}, {agent_temperature}")
        self.weights.update(reliable_prototype_ce=lambda_pro, correlation_kl=lambda_corr, rank_kl=lambda_rank)
        self.num_agents, self.top_ranks, self.agent_temperature = num_agents, top_ranks, agent_temperature
        self.agent_score, self.pro_mode = agent_score, pro_mode

    def terms(
        self,
        output: torch.Tensor,
        features: torch.Tensor,
        teacher_output: torch.Tensor,
        teacher_features: torch.Tensor,
        target: Mapping[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """CAFA's terms plus reliable_prototype_ce, correlation_kl and rank_kl."""
        terms, prototypes = super().terms(output, features, teacher_output, teacher_features, target)
        split = int(target["num_source"])
        strong, weak = features[split:], teacher_features.detach()
        teacher_logits = teacher_output[:, list(SEG_CHANNELS)]
        if prototypes is None:
            terms["reliable_prototype_ce"] = strong.sum() * 0
        else:
            with torch.no_grad():
                target_prototypes = reliable_prototypes(weak, prototypes.detach(), self.tau)
            if self.pro_mode == "pseudo_label":  # the weak view's target-prototype labels supervise the strong head
                labels = prototype_similarity(weak, target_prototypes)
                terms["reliable_prototype_ce"] = pseudo_label_ce(output[split:, list(SEG_CHANNELS)], labels)
            else:  # CAFA's L_p with the target prototypes
                scores = prototype_similarity(strong, target_prototypes) / self.temperature
                terms["reliable_prototype_ce"] = pseudo_label_ce(scores, teacher_logits)
        index = select_agents(weak, self.num_agents, self.agent_score)
        weak_corr = agent_log_correlation(weak, gather_agents(weak, index), self.agent_temperature)
        strong_corr = agent_log_correlation(strong, gather_agents(strong, index), self.agent_temperature)
        terms["correlation_kl"] = kl_consistency(strong_corr, weak_corr, dim=1)
        terms["rank_kl"] = rank_consistency(strong_corr, weak_corr, self.top_ranks, dim=1)
        return terms, prototypes
