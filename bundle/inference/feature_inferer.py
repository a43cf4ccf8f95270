"""Training inferer that also returns the decoder features, for losses on z = f_D∘f_E(x)."""

from __future__ import annotations

import torch
from monai.inferers import Inferer

from bundle.networks.multitask_unet import forward_with_features


class FeatureInferer(Inferer):
    """`forward_with_features(network, inputs)` → (output, features); `forward` itself stays one tensor. With a
    `teacher` batch (the weak views of the two-view baselines) it also returns the teacher's (output, features),
    detached: from a second pass under no_grad, or (`batched`) from the same pass as `inputs`."""

    def __init__(self, batched: bool = False) -> None:
        super().__init__()
        self.batched = batched

    def __call__(
        self, inputs: torch.Tensor, network: torch.nn.Module, *args, teacher: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, ...]:
        """(output (B, 3, H, W), features (B, D, H, W)[, teacher output, teacher features])."""
        if teacher is None:
            return forward_with_features(network, inputs, *args, **kwargs)
        if self.batched:  # one call; the teacher rows cost a backward pass that gives them no gradient
            output, features = forward_with_features(network, torch.cat([inputs, teacher]), *args, **kwargs)
            n = len(inputs)
            return output[:n], features[:n], output[n:].detach(), features[n:].detach()
        output, features = forward_with_features(network, inputs, *args, **kwargs)
        with torch.no_grad():
            teacher_output, teacher_features = forward_with_features(network, teacher, *args, **kwargs)
        return output, features, teacher_output, teacher_features
