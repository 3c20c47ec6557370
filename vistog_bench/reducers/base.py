"""The one interface every vision-side reducer meets, and the checks they share.

Glossary: B images (a video's frames count as images), P patches (576 for ViT-L/14 at 336 px), K the budget
(visual tokens one image gives the LLM), Dv vision width, h heads, dh head width.

A reducer is a plain object (not an `nn.Module`, so it never enters a checkpoint's state dict) with

    budget: int                   K, tokens per image it returns
    needs_cls_attention: bool     whether the vision tower must also return CLS attention + patch keys
    __call__(states: VisionStates) -> [B, K, Dv]

(`vistog_bench.model.TokenReducer`). Each image is reduced on its own: nothing depends on the other images of the
batch, so a batch gives each image the answer it gets alone. FastV prunes inside the LLM instead (fastv.py).
"""

from __future__ import annotations

import torch

from ..errors import UsageError


def check_budget(budget: int, num_patches: int) -> int:
    """A budget is an integer number of tokens per image in 1..P."""
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= num_patches:
        raise UsageError(f"budget must be an integer in 1..{num_patches} (the patch count), got {budget!r}")
    return budget


def gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` [B, K] of `states` [B, P, C] -> [B, K, C]."""
    return states.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


def check_output(tokens: torch.Tensor, batch: int, budget: int, name: str) -> torch.Tensor:
    """Every reducer returns exactly `budget` tokens per image."""
    assert tokens.shape[:2] == (batch, budget), f"{name}: {list(tokens.shape)} for {batch} images at budget {budget}"
    return tokens


def head_mean(keys: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Attention keys [B, P, Dv] (heads concatenated) -> their mean over heads [B, P, dh] (VisionZip's metric)."""
    batch, length, width = keys.shape
    return keys.view(batch, length, num_heads, width // num_heads).mean(dim=2)


__all__ = ["check_budget", "check_output", "gather_tokens", "head_mean"]
