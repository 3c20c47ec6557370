"""`random`: a seeded uniform choice of K of the P patches, kept in spatial (raster) order.

The random-drop baseline of the token-reduction literature (e.g. the "random" rows of FastV, 2403.06764, and of
VisionZip, 2412.04467), which is often surprisingly strong. No reference implementation is followed.

Departure worth knowing: the K positions are drawn **once**, from `torch.Generator().manual_seed(seed)` on the CPU,
and used for every image. So an image's tokens depend on the seed only, never on which images share its batch or on
the device; reproducibility across runs and batch sizes is exact. Averaging over draws means running several seeds
(`--seed`), not hoping that per-image draws average out inside one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.vision import VisionStates
from .base import check_budget, check_output, gather_tokens
from .spec import ENCODER, EVERY_FAMILY, MethodSpec, Parts


def random_positions(budget: int, num_patches: int, seed: int) -> torch.Tensor:
    """K distinct patch indices in increasing order, a function of (budget, P, seed) only: [K]."""
    check_budget(budget, num_patches)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(num_patches, generator=generator)[:budget].sort().values


@dataclass(frozen=True)
class RandomReducer:
    budget: int
    num_patches: int
    seed: int = 0
    needs_cls_attention: bool = False
    positions: torch.Tensor = field(init=False, repr=False)  # [K], CPU

    def __post_init__(self):
        object.__setattr__(self, "positions", random_positions(self.budget, self.num_patches, self.seed))

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, P, Dv]
        index = self.positions.to(patches.device).expand(patches.shape[0], -1)  # [B, K]
        return check_output(gather_tokens(patches, index), patches.shape[0], self.budget, "random")


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    return Parts(RandomReducer(budget, model.config.num_patches, seed=seed))


SPEC = MethodSpec(
    "random",
    "a seeded uniform choice of K patches, in raster order (apply_method's seed; --seed)",
    acts=(ENCODER,),
    where="after the vision tower (other families: at the LLM input)",
    build=_build,
    families=EVERY_FAMILY,
    reference="none (torch.randperm of a seeded generator)",
)

__all__ = ["SPEC", "RandomReducer", "random_positions"]
