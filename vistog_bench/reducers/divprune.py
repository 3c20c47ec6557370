"""`divprune`: max-min diversity selection of the visual tokens at the LLM input.

Alvar, Singh, Akbari, Zhang. "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models."
CVPR 2025 (arXiv 2503.02175). Reference: its `DivPrune` function, as ported in ModelTC/llmc
(`llmc/compression/token_reduction/divprune.py`), run on LLaVA's `inputs_embeds` after the projector.

Glossary: V visual tokens of one image (P), K budget, D LLM width.

As the reference: distances d(i, j) = 1 - cos(x_i, x_j) between the projected visual tokens of one image; the first
token kept is the one farthest from its nearest neighbour; each next one maximises its minimum distance to the kept
set (greedy max-min diversity, the MMDP); the K kept tokens enter the LLM in spatial order.

Where: a stage at LLM layer 0 of the shared in-LLM pruner (llm_pruning.py), because the reference selects on the
projected features: the prompt carries P placeholders per image, the projector runs on all P, and every decoder
layer sees K. Departure: one running minimum instead of the reference's minimum over the kept rows at every step
(same choices); ties broken by the lowest index, as `argmax`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .llm_pruning import SampleView, Selection


def max_min_diversity(features: torch.Tensor, keep: int) -> torch.Tensor:
    """Greedy max-min diversity over features [V, C]: indices [keep], in the order chosen."""
    normed = F.normalize(features.float(), dim=-1)
    distance = 1.0 - normed @ normed.T  # [V, V]
    nearest = distance.topk(2, dim=0, largest=False).values[1]  # [V], distance to the nearest other token
    chosen = [int(nearest.argmax())]
    closest = distance[chosen[0]].clone()  # [V], each token's distance to the kept set
    for _ in range(keep - 1):
        chosen.append(int(closest.argmax()))
        closest = torch.minimum(closest, distance[chosen[-1]])
    return torch.tensor(chosen, device=features.device)


@dataclass(frozen=True)
class DivPruneSelector:
    needs_attention: bool = False

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        kept = [block[max_min_diversity(view.hidden[block], keep)] for block in view.blocks]
        return Selection(torch.cat(kept))


__all__ = ["DivPruneSelector", "max_min_diversity"]
