"""`vispruner`: important tokens by [CLS] attention, then diverse tokens by removing duplicates.

Zhang, Cheng, Lu, Zhang, Zhuo, Cao, Guo, She, Zhang. "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs." ICCV 2025 (arXiv 2412.01818). Reference: Theia-4869/VisPruner at
aefa01adc7c7ce6334e880c88225e90cede760d1, `llava/model/llava_arch.py` (`encode_images`) and
`llava/model/multimodal_encoder/clip_encoder.py` (`feature_select`: CLS row of the feature layer's attention).

Glossary: B images, P patches, K budget = K_imp important + K_div diverse, R remaining, Dv vision width.

As the reference, at LLaVA's feature layer:
  1. important: the K_imp = floor(K r) first patches of the CLS attention (mean over heads) sorted by torch's
     default (not stable) descending sort;
  2. diverse: the others, in that order, are thinned until K_div remain: each round splits them alternately into
     A (even) and B (odd), gives each A token its highest cosine similarity to B (features normalised in the model's
     dtype), and drops the min(8, R - K_div) A tokens first in torch's default descending sort of those similarities
     (the rest of A, then B, carry on); exact ties, common among near-duplicate patches, fall where that sort puts
     them;
  3. output in spatial order (the reference keeps a mask over the patches).
The important ratio r is a script argument of the reference (`--important_ratio`); 0.5 here, the option
`important_ratio` overrides. tests/test_reducers_conformance.py checks the selection against the reference's
(tests/data/conformance/vispruner). Departure: the CLS attention comes from the tower in float32
(vistog_bench.model.vision); the reference's eager attention is in the model's dtype (the same on float32 models).
Options (ours, not the reference): `ties="stable"` keeps tied A tokens in their order (a stable sort);
`precision="float32"` normalises and compares in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..model.vision import VisionStates
from .base import check_budget, check_output, gather_tokens
from .spec import ENCODER, EVERY_FAMILY, MethodSpec, Option, Parts, given

IMPORTANT_RATIO = 0.5
ROUND = 8  # tokens dropped per matching round, the reference's constant
TIES = ("reference", "stable")  # torch's default sort (the reference) or a stable one
PRECISIONS = ("model", "float32")  # the dtype the features are normalised and compared in


def remove_duplicates(normed: torch.Tensor, residual: torch.Tensor, keep: int, stable: bool = False) -> torch.Tensor:
    """Thin residual indices [B, R] (into normed [B, P, C], unit rows) down to [B, keep] by iterative matching.

    stable=False ranks the similarities with torch's default sort, as the reference: exact ties fall where the kernel
    puts them; stable=True keeps tied A tokens in their order."""
    while (drop := min(ROUND, residual.shape[1] - keep)) > 0:
        tokens = gather_tokens(normed, residual)  # [B, R, C]
        a, b = tokens[:, ::2], tokens[:, 1::2]
        # [B, R/2, R/2] <- [B, R/2, C] @ [B, C, R/2]
        closest = (a @ b.transpose(1, 2)).max(dim=-1).values  # [B, |A|]
        distinct = closest.argsort(dim=-1, descending=True, stable=stable)[:, drop:]  # A tokens that stay
        residual = torch.cat([residual[:, ::2].gather(1, distinct), residual[:, 1::2]], dim=1)
    return residual


@dataclass(frozen=True)
class VisPrunerReducer:
    budget: int
    num_patches: int
    important_ratio: float = IMPORTANT_RATIO
    ties: str = "reference"  # TIES
    precision: str = "model"  # PRECISIONS
    needs_cls_attention: bool = True

    def __post_init__(self):
        check_budget(self.budget, self.num_patches)
        if not 0.0 <= self.important_ratio <= 1.0:
            raise UsageError(f"vispruner important_ratio must be in 0..1, got {self.important_ratio}")
        if self.ties not in TIES:
            raise UsageError(f"vispruner ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"vispruner precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def kept(self, states: VisionStates) -> torch.Tensor:
        """The patches kept [B, K] (indices into the P patches, spatial order)."""
        patches, attention = states.patch_states, states.cls_attention  # [B, P, Dv], [B, P]
        important = int(self.budget * self.important_ratio)
        stable = self.ties == "stable"
        order = attention.argsort(dim=1, descending=True, stable=stable)  # [B, P]
        features = patches.float() if self.precision == "float32" else patches
        normed = features / features.norm(dim=-1, keepdim=True)  # the reference's normalisation (no epsilon)
        diverse = remove_duplicates(normed, order[:, important:], self.budget - important, stable)
        return torch.cat([order[:, :important], diverse], dim=1).sort(dim=1).values

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, P, Dv]
        return check_output(gather_tokens(patches, self.kept(states)), patches.shape[0], self.budget, "vispruner")


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    chosen = given(options, "important_ratio", "ties", "precision")
    return Parts(VisPrunerReducer(budget, model.config.num_patches, **chosen))


SPEC = MethodSpec(
    "vispruner",
    "important tokens by CLS attention, the rest thinned of duplicates (Zhang et al., ICCV 2025, arXiv 2412.01818)",
    acts=(ENCODER,),
    where="after the vision tower (CLS attention; other families: at the LLM input)",
    build=_build,
    options=(
        Option("important_ratio", float, IMPORTANT_RATIO, "r: floor(K r) important tokens (a script argument there)"),
        Option("ties", str, "reference", "torch's default sort (the reference) or a stable one", TIES),
        Option("precision", str, "model", "the dtype features are normalised and compared in", PRECISIONS),
    ),
    families=EVERY_FAMILY,
    family_scores=True,
    reference="Theia-4869/VisPruner @ aefa01a",
)

__all__ = ["IMPORTANT_RATIO", "PRECISIONS", "SPEC", "TIES", "VisPrunerReducer", "remove_duplicates"]
