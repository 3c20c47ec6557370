"""`vscan`: global + local scans with merging at the vision encoder's output, then pruning in the middle of the LLM.

Zhang, Ma, Fang, Yu, Zhang, Zhang, Xie, Sycara, Mi, Yu. "VScan: Rethinking Visual Token Reduction for Efficient
Large Vision-Language Models." arXiv 2505.22654 (TMLR 2026). Its code (Tencent/SelfEvolvingAgent, `VScan/`) was not
readable from here: this follows the paper's description, and every constant below is ours.

Glossary: P patches on a G x G grid, K0 tokens leaving the encoder (K_g global + K_l local), K1 kept from LLM layer
l on, L decoder layers, K the budget.

Stage 1, at LLaVA's feature layer (a vision-side reducer):
  1. global scan: the K_g = floor(K0 / 2) patches with the highest CLS attention;
  2. local scan: the grid cut into a x b windows (a = ceil(sqrt(K_l)), b = ceil(K_l / a)); the highest-attention
     patch of each window not taken globally, the K_l best of those window winners (then the next by attention,
     should windows run out of patches);
  3. merging: every other patch joins its most cosine-similar selected patch; a selected token becomes the mean of
     itself and its joiners; output in spatial order.
Stage 2, in the LLM at layer l (16 of 32, scaled with depth): the last instruction token's attention ranks each
image's K0 tokens; K1 stay (FastV's machinery, llm_pruning.py).
Budget: the layer mean. K1 = K0 / 2 is our choice; K0 = round(K L / (l + (L - l) / 2)) and K1 solved exactly
(schedule.py), so that the mean over layers is the budget. Departures: the paper's local scan reads a shallow
layer's attention; here both scans read the feature layer's CLS attention (the tower's one hook).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.vision import VisionStates
from .base import check_budget, check_output, gather_tokens

LAYER = 16  # the LLM stage, of 32 layers
LLM_KEEP = 0.5  # K1 / K0


def encoder_tokens(budget: int, num_layers: int, layer: int, num_patches: int) -> int:
    """K0: tokens per image leaving the encoder so that K0 until layer l and K0 / 2 after average to the budget."""
    return min(num_patches, round(budget * num_layers / (layer + (num_layers - layer) * LLM_KEEP)))


def window_ids(grid: int, windows: int, device) -> torch.Tensor:
    """The window of each patch [P] when a G x G grid is cut into a x b >= `windows` windows."""
    rows = math.ceil(math.sqrt(windows))
    columns = math.ceil(windows / rows)
    y, x = torch.arange(grid, device=device).repeat_interleave(grid), torch.arange(grid, device=device).repeat(grid)
    return (y * rows // grid) * columns + (x * columns // grid)


def scan(attention: torch.Tensor, grid: int, keep: int) -> torch.Tensor:
    """Selected patch indices [B, keep]: K_g global by attention [B, P], then K_l local window winners."""
    batch = attention.shape[0]
    num_global = keep // 2
    chosen = attention.topk(num_global, dim=1).indices  # [B, K_g]
    rest = attention.scatter(1, chosen, -torch.inf)
    windows = window_ids(grid, keep - num_global, attention.device)  # [P]
    count = int(windows.max()) + 1
    best = torch.full((batch, count), -torch.inf, device=attention.device).scatter_reduce(
        1, windows.expand(batch, -1), rest, reduce="amax"
    )  # [B, windows]
    is_winner = (rest == best.gather(1, windows.expand(batch, -1))) & torch.isfinite(rest)  # [B, P]
    # window winners first (attention is at most 1), then, should windows run out, the next by attention
    local = (rest + 2.0 * is_winner).topk(keep - num_global, dim=1).indices  # [B, K_l]
    return torch.cat([chosen, local], dim=1)


def merge_into_selected(patches: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Each selected token [B, K] becomes the mean of itself and the patches most similar to it: [B, K, Dv]."""
    normed = F.normalize(patches.float(), dim=-1)
    # [B, P, K] <- [B, P, Dv] @ [B, Dv, K]
    similarity = normed @ gather_tokens(normed, selected).transpose(1, 2)
    target = similarity.argmax(dim=2)  # [B, P]
    target.scatter_(1, selected, torch.arange(selected.shape[1], device=patches.device).expand_as(selected))
    weights = torch.zeros(*selected.shape, patches.shape[1], device=patches.device)
    weights.scatter_(1, target.unsqueeze(1), 1.0)  # [B, K, P]
    # [B, K, Dv] <- [B, K, P] @ [B, P, Dv]
    return ((weights @ patches.float()) / weights.sum(dim=2, keepdim=True)).to(patches.dtype)


@dataclass(frozen=True)
class VScanReducer:
    budget: int  # K0, tokens per image leaving the encoder
    num_patches: int
    grid: int
    needs_cls_attention: bool = True

    def __post_init__(self):
        check_budget(self.budget, self.num_patches)

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, P, Dv]
        selected = scan(states.cls_attention, self.grid, self.budget).sort(dim=1).values  # spatial order
        return check_output(merge_into_selected(patches, selected), patches.shape[0], self.budget, "vscan")


__all__ = ["LAYER", "LLM_KEEP", "VScanReducer", "encoder_tokens", "merge_into_selected", "scan"]
