"""`pool`: 2-D average pooling of the patch grid down to the budget.

The simple baseline many token-reduction papers report (e.g. LLaVA-1.5 with pooled features; "average pooling" rows
in VisionZip, 2412.04467, and in VisToG, 2411.17773). No single reference implementation: this one is PyTorch's
`adaptive_avg_pool2d` on the G x G grid (G = sqrt(P), 24 for LLaVA-1.5).

Layout rule (how a budget K becomes a grid):
  * K = k x k is pooled to k x k (64 -> 8 x 8, 144 -> 12 x 12, 576 -> 24 x 24 = identity);
  * otherwise K = r x c with r the largest divisor of K not above sqrt(K) (the pair nearest a square), r rows and
    c >= r columns: 192 -> 12 x 16, 128 -> 8 x 16, 32 -> 4 x 8. The image is square, so the columns are pooled more
    finely than the rows (tokens are not square).
  * a K with no such pair fitting the grid (c > G, e.g. a prime above G such as 29, or 500 = 20 x 25) is refused
    with a UsageError that names the nearest budgets that work: pooling never drops or invents tokens.
Windows follow `adaptive_avg_pool2d`: when G is not a multiple of r (or c) neighbouring windows overlap by one patch.
Tokens leave in raster order (row by row), as LLaVA's own patches do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..model.geometry import patch_side
from ..model.vision import VisionStates
from .base import check_budget, check_output
from .spec import ENCODER, MethodSpec, Parts


def pool_layout(budget: int, grid: int) -> tuple[int, int]:
    """(rows, columns) of the pooled grid for `budget` tokens on a `grid` x `grid` patch grid (see module docstring)."""
    check_budget(budget, grid * grid)
    rows = max(r for r in range(1, math.isqrt(budget) + 1) if budget % r == 0)
    columns = budget // rows
    if columns > grid:
        poolable = [k for k in range(1, grid * grid + 1) if _fits(k, grid)]
        nearest = sorted(poolable, key=lambda k: (abs(k - budget), k))[:2]
        raise UsageError(
            f"pool cannot lay {budget} tokens out on a {grid} x {grid} grid ({rows} x {columns} is the squarest "
            f"factorisation); nearest poolable budgets: {', '.join(map(str, sorted(nearest)))}"
        )
    return rows, columns


def _fits(budget: int, grid: int) -> bool:
    rows = max(r for r in range(1, math.isqrt(budget) + 1) if budget % r == 0)
    return budget // rows <= grid


@dataclass(frozen=True)
class PoolReducer:
    budget: int
    grid: int  # G, patches per side
    needs_cls_attention: bool = False

    def __post_init__(self):
        pool_layout(self.budget, self.grid)

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, P, Dv]
        batch, num_patches, width = patches.shape
        assert num_patches == self.grid**2, f"pool: {num_patches} patches is not a {self.grid} x {self.grid} grid"
        rows, columns = pool_layout(self.budget, self.grid)
        image = patches.transpose(1, 2).reshape(batch, width, self.grid, self.grid)  # [B, Dv, G, G]
        pooled = F.adaptive_avg_pool2d(image, (rows, columns))  # [B, Dv, r, c]
        tokens = pooled.flatten(2).transpose(1, 2)  # [B, K, Dv], raster order
        return check_output(tokens, batch, self.budget, "pool")


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    return Parts(PoolReducer(budget, grid=patch_side(model.config.vision_config)))


SPEC = MethodSpec(
    "pool",
    "2-D average pooling of the patch grid to the budget's layout",
    acts=(ENCODER,),
    where="after the vision tower",
    build=_build,
    not_on_families="pools LLaVA-1.5's 24 x 24 patch grid; anyres / dynamic-resolution grids differ per image",
    reference="none (PyTorch's adaptive_avg_pool2d)",
)

__all__ = ["SPEC", "PoolReducer", "pool_layout"]
