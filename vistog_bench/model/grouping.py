"""The grouping layer: every patch is assigned to exactly one semantic token; a group token is its semantic token
plus the projected mean of its patches, followed by a residual MLP.

Glossary: B batch, P patches, N semantic (group) tokens, Dv vision width.

The closest public design is GroupViT's grouping block (Xu et al., "GroupViT: Semantic Segmentation Emerges from Text
Supervision", CVPR 2022; NVlabs/GroupViT `models/group_vit.py`: `GroupingBlock`, `AssignAttention`,
`gumbel_softmax`, `hard_softmax`). Like GroupViT: queries from the group tokens, keys/values from the patches,
Gumbel-softmax over the *group* axis so each patch picks one group, straight-through hard one-hot when training.
Unlike GroupViT: no pre-assignment cross-attention block (VisToG's semantic tokens already read the image inside the
encoder), argmax at evaluation (deterministic), and an exact mean (`count.clamp(min=1)`) instead of GroupViT's
`assign_eps` smoothing; an empty group contributes nothing but its semantic token. A learnt logit scale exp(t)
(CLIP's device for its contrastive logits) lets training make the assignment logits outgrow the Gumbel noise
(std 1.28): at initialisation q.k/sqrt(Dv) spreads less than the noise, so the hard training assignment is mostly
noise while the evaluation argmax is not. The scale does not change the evaluation argmax.

    logits = exp(t) (LN(s) Wq) (LN(x) Wk)^T / sqrt(Dv)                 [B, N, P]
    A      = hard(gumbel_softmax(logits / tau, axis=N))   (training)     one-hot over N for each patch
           = one_hot(argmax_N logits)                      (evaluation)
    g      = s + Wo (A (LN(x) Wv) / max(A 1, 1))                          [B, N, Dv]
    out    = g + MLP(LN(g))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_softmax(logits: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    """softmax((logits + g) / tau) with g ~ Gumbel(0, 1)."""
    gumbels = -torch.empty_like(logits).exponential_().log()
    return F.softmax((logits + gumbels) / tau, dim=dim)


def hard_softmax(soft: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot of the argmax in the forward pass, the gradient of `soft` in the backward pass (straight-through)."""
    index = soft.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


def argmax_one_hot(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Deterministic one-hot assignment used at evaluation."""
    index = logits.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(logits).scatter_(dim, index, 1.0)


SCALE_NAME = "log_logit_scale"


def _upgrade_hook(state_dict, prefix, *args) -> None:
    """nn.Module.load_state_dict pre-hook: a scalar scale (an earlier checkpoint) loads as [1]."""
    key = prefix + SCALE_NAME
    if key in state_dict and state_dict[key].dim() == 0:
        state_dict[key] = state_dict[key].reshape(1)


class VisToGGroupingLayer(nn.Module):
    def __init__(
        self,
        width: int,
        *,
        mlp_ratio: float = 4.0,
        tau: float = 1.0,
        hard: bool = True,
        eps: float = 1e-5,
        logit_scale: float = 1.0,
    ):
        super().__init__()
        self.tau = tau
        self.hard = hard
        self.scale = width**-0.5
        self.logit_scale_init = logit_scale
        # [1] t, learnt; one element, not a scalar: FSDP2's fully_shard refuses 0-d parameters
        self.log_logit_scale = nn.Parameter(torch.tensor([math.log(logit_scale)]))
        self._register_load_state_dict_pre_hook(_upgrade_hook)
        self.norm_semantic = nn.LayerNorm(width, eps=eps)
        self.norm_patches = nn.LayerNorm(width, eps=eps)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def assignment(self, semantic: torch.Tensor, patches_normed: torch.Tensor) -> torch.Tensor:
        """[B, N, P] assignment; each patch column is one-hot over the N groups (soft if `hard=False` in training)."""
        query = self.q_proj(self.norm_semantic(semantic))  # [B, N, Dv]
        key = self.k_proj(patches_normed)  # [B, P, Dv]
        scale = self.scale * self.log_logit_scale.exp()
        logits = (query @ key.transpose(1, 2)) * scale  # [B, N, P] <- [B, N, Dv] @ [B, Dv, P]
        if not self.training:
            return argmax_one_hot(logits, dim=1)
        soft = gumbel_softmax(logits, self.tau, dim=1)
        return hard_softmax(soft, dim=1) if self.hard else soft

    def forward(self, semantic: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """semantic [B, N, Dv], patches [B, P, Dv] -> group tokens [B, N, Dv]."""
        patches_normed = self.norm_patches(patches)
        assign = self.assignment(semantic, patches_normed)  # [B, N, P]
        counts = assign.sum(dim=-1, keepdim=True).clamp(min=1.0)  # [B, N, 1]
        # [B, N, Dv] <- [B, N, P] @ [B, P, Dv]
        group_mean = (assign @ self.v_proj(patches_normed)) / counts
        groups = semantic + self.out_proj(group_mean)
        groups = groups + self.mlp(self.norm_mlp(groups))
        assert groups.shape == semantic.shape, (groups.shape, semantic.shape)
        return groups


__all__ = ["VisToGGroupingLayer", "gumbel_softmax", "hard_softmax", "argmax_one_hot"]
