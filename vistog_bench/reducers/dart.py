"""`dart`: duplication-aware pruning inside the LLM at an early layer.

Wen, Gao, Wang, Zhang, Zhang, Li, He, Zhang. "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More." arXiv 2502.11494. Reference: ZichenWen1/DART (LLaVA scripts: `pruned_layer=2`,
`pivot_image_token=4`, `pivot_text_token=4`), as ported in ModelTC/llmc (`token_reduction/dart.py`,
`get_retained_image_token`).

Glossary: V visual tokens of one image, K_img kept, p_v / p_t image / text pivots, D LLM width.

As the reference, at the input of layer K (2 for a 32-layer LLM):
  1. pivots: the p_v visual tokens and p_t text tokens after the image whose keys at layer K-1 (after RoPE) have the
     largest L1 norm;
  2. for each pivot in turn, the candidate visual tokens *least* cosine-similar to it (states entering layer K,
     through the LLM's final RMSNorm as the reference does) are kept and leave the candidates;
  3. kept = image pivots + those picks (text pivots are text: always kept); spatial order.
Budget: the layer mean (as PyramidDrop / SparseVLM count), so K_img = (K_mean L - K P) / (L - K) from layer K on.

Departures:
  1. Exact K_img: the reference takes ceil(K_img / (p_v + p_t)) per pivot (its kept count overshoots); here the
     K_img - p_v picks are shared out, the first pivots taking one more.
  2. Per image for several images (video frames); text pivots from the text after the sample's last image.
  3. The layer scales with the LLM's depth (2 of 32 -> round(2 L / 32), at least 1); `layer=` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cdpruner import instruction_positions
from .llm_pruning import SampleView, Selection

PIVOT_IMAGE, PIVOT_TEXT, LAYER = 4, 4, 2  # the reference's LLaVA-1.5 settings (32 layers)


def duplication_aware(
    states: torch.Tensor,
    key_norm: torch.Tensor,
    block: torch.Tensor,
    text_pivots: torch.Tensor,
    keep: int,
    pivot_image: int,
) -> torch.Tensor:
    """Kept positions [keep] of one image: its image pivots, then each pivot's least similar candidates.

    states [T, C] unit rows, key_norm [T] (L1 of the keys), block [V] the image's positions, text_pivots [p_t]."""
    image_pivots = block[key_norm[block].topk(min(pivot_image, keep)).indices]
    pivots = torch.cat([image_pivots, text_pivots])
    picks = keep - image_pivots.numel()
    shares = [picks // pivots.numel() + (i < picks % pivots.numel()) for i in range(pivots.numel())]
    candidate = ~torch.isin(block, image_pivots)  # [V]
    kept = [image_pivots]
    for pivot, share in zip(pivots.tolist(), shares, strict=True):
        if share == 0:
            continue
        similarity = (states[block] @ states[pivot]).masked_fill(~candidate, torch.inf)  # [V]
        chosen = (-similarity).topk(share).indices
        candidate[chosen] = False
        kept.append(block[chosen])
    return torch.cat(kept)


@dataclass(frozen=True, eq=False)
class DARTSelector:
    norm: nn.Module  # the LLM's final RMSNorm (weights shared, not copied)
    pivot_image: int = PIVOT_IMAGE
    pivot_text: int = PIVOT_TEXT
    needs_attention: bool = True  # reads layer K-1's keys

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        states = F.normalize(self.norm(view.hidden).float(), dim=-1)  # [T, D]
        key_norm = view.keys.abs().sum(dim=-1)  # [T]
        text = instruction_positions(view)
        text_pivots = text[key_norm[text].topk(min(self.pivot_text, text.numel())).indices]
        kept = [
            duplication_aware(states, key_norm, block, text_pivots, keep, self.pivot_image) for block in view.blocks
        ]
        return Selection(torch.cat(kept))


__all__ = ["LAYER", "DARTSelector", "duplication_aware"]
