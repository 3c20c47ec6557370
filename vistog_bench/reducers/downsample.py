"""`downsample`: pool the patch grid to the budget at the start of the vision encoder.

The baseline that VTC-Bench (Liao et al., "Are We Using the Right Benchmark: An Evaluation Framework for Visual
Token Compression Methods", arXiv 2510.07143) finds hard to beat: give the model a coarser image. No reference
implementation is followed.

Here: the patch grid is average-pooled to the budget's layout (pool.py's rule: k x k, or the factor pair nearest a
square) inside the first encoder layer, between its attention and its MLP (the tower's `token_merge` hook, the one
ToMe uses); the remaining layers run on CLS + K tokens. Token sizes are reset to 1, so no proportional attention:
later layers see the pooled tokens as ordinary patches, as they would see a smaller image.

Departure from a true image resize: the first layer's attention runs at full resolution (the hook sits after it),
and CLIP's position embeddings are pooled with the patches instead of interpolated. Cost: layer 0 at P + 1 tokens,
layers 1..L-1 at K + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.geometry import patch_side
from .pool import pool_layout
from .spec import ENCODER, MethodSpec, Parts
from .tome import ToMeReducer


@dataclass(frozen=True)
class GridDownsample:
    """A `TokenMerge` that pools the patches of layer 0 to rows x columns and leaves the other layers alone."""

    budget: int
    grid: int  # G, patches per side

    def __post_init__(self):
        pool_layout(self.budget, self.grid)

    def __call__(self, layer_index: int, hidden_states: torch.Tensor, key: torch.Tensor, sizes: torch.Tensor):
        if layer_index != 0:
            return hidden_states, sizes
        batch, _, width = hidden_states.shape
        cls, patches = hidden_states[:, :1], hidden_states[:, 1:]  # [B, 1, Dv], [B, P, Dv]
        image = patches.transpose(1, 2).reshape(batch, width, self.grid, self.grid)  # [B, Dv, G, G]
        pooled = F.adaptive_avg_pool2d(image, pool_layout(self.budget, self.grid)).flatten(2).transpose(1, 2)
        merged = torch.cat([cls, pooled], dim=1)  # [B, 1 + K, Dv]
        return merged, sizes.new_ones(merged.shape[:2])


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    return Parts(ToMeReducer(budget), GridDownsample(budget, patch_side(model.config.vision_config)))


SPEC = MethodSpec(
    "downsample",
    "the patch grid pooled to the budget inside the encoder's first layer (VTC-Bench's baseline, arXiv 2510.07143)",
    acts=(ENCODER,),
    where="inside the encoder's first layer",
    build=_build,
    not_on_families="downsamples LLaVA-1.5's 24 x 24 patch grid inside the encoder",
    reference="none (pool.py's layout through the tower's token_merge)",
)

__all__ = ["SPEC", "GridDownsample"]
