"""`vispruner`: important tokens by [CLS] attention, then diverse tokens by removing duplicates.

Zhang, Cheng, Lu, Zhang, Zhuo, Cao, Guo, She, Zhang. "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs." ICCV 2025 (arXiv 2412.01818). Reference: Theia-4869/VisPruner,
`llava/model/llava_arch.py` (`encode_images`).

Glossary: B images, P patches, K budget = K_imp important + K_div diverse, R remaining, Dv vision width.

As the reference, at LLaVA's feature layer:
  1. important: the K_imp = floor(K r) patches with the highest CLS attention (mean over heads);
  2. diverse: the others, in descending-attention order, are thinned until K_div remain: each round splits them
     alternately into A (even) and B (odd), gives each A token its highest cosine similarity to B, and drops the
     min(8, R - K_div) A tokens most similar to B (the rest of A, then B, carry on);
  3. output in spatial order (the reference keeps a mask over the patches).
The important ratio r is a script argument of the reference (`--important_ratio`); 0.5 here, the option
`important_ratio` overrides. Departure: none in the selection; CLS attention from the tower's feature layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..model.vision import VisionStates
from .base import check_budget, check_output, gather_tokens

IMPORTANT_RATIO = 0.5
ROUND = 8  # tokens dropped per matching round, the reference's constant


def remove_duplicates(normed: torch.Tensor, residual: torch.Tensor, keep: int) -> torch.Tensor:
    """Thin residual indices [B, R] (into normed [B, P, C], unit rows) down to [B, keep] by iterative matching."""
    while (drop := min(ROUND, residual.shape[1] - keep)) > 0:
        tokens = gather_tokens(normed, residual)  # [B, R, C]
        a, b = tokens[:, ::2], tokens[:, 1::2]
        # [B, R/2, R/2] <- [B, R/2, C] @ [B, C, R/2]
        closest = (a @ b.transpose(1, 2)).max(dim=-1).values  # [B, |A|]
        # stable: exact ties in similarity keep A's order (the reference's unstable argsort leaves them to the kernel)
        distinct = closest.argsort(dim=-1, descending=True, stable=True)[:, drop:]  # A tokens that stay
        residual = torch.cat([residual[:, ::2].gather(1, distinct), residual[:, 1::2]], dim=1)
    return residual


@dataclass(frozen=True)
class VisPrunerReducer:
    budget: int
    num_patches: int
    important_ratio: float = IMPORTANT_RATIO
    needs_cls_attention: bool = True

    def __post_init__(self):
        check_budget(self.budget, self.num_patches)
        if not 0.0 <= self.important_ratio <= 1.0:
            raise UsageError(f"vispruner important_ratio must be in 0..1, got {self.important_ratio}")

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches, attention = states.patch_states, states.cls_attention  # [B, P, Dv], [B, P]
        important = int(self.budget * self.important_ratio)
        order = attention.argsort(dim=1, descending=True)  # [B, P]
        normed = F.normalize(patches.float(), dim=-1)
        diverse = remove_duplicates(normed, order[:, important:], self.budget - important)
        kept = torch.cat([order[:, :important], diverse], dim=1).sort(dim=1).values  # [B, K], spatial order
        return check_output(gather_tokens(patches, kept), patches.shape[0], self.budget, "vispruner")


__all__ = ["IMPORTANT_RATIO", "VisPrunerReducer", "remove_duplicates"]
