"""`sparsevlm`: text-guided progressive sparsification inside the LLM, with token recycling.

Zhang, Fan, Ma, et al. "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference."
ICML 2025 (arXiv 2410.04417). Reference: Gumpest/SparseVLMs, as ported in ModelTC/llmc (`token_reduction/
sparsevlm.py`: `pruning_loc = [2, 6, 15]`, `attn_postprocess_topk`, `cluster_and_merge`).

Glossary: V visual tokens of one image entering a stage, k kept by rank, m recycled candidates, c recycled tokens,
D LLM width.

As the reference, after layers 2, 6 and 15 (here: at the inputs of the layers after them, which is the same point):
  1. raters: the instruction tokens whose relevance to the image (softmax over the instruction of visual . text,
     mean over visual tokens) is above the mean;
  2. each visual token's score is the attention the raters pay it in that layer (mean over raters and heads);
  3. the top k stay; of the deleted, the top 30 % by score (+1) are recycled: clustered by density-peak k-NN
     (DPC-kNN, k = c) into c = floor(m / 10) + 1 centres, each cluster averaged into one token;
  4. visual tokens from then on: k kept + c recycled (the recycled take their centres' places, in order).
Budget: the layer mean, as the reference's own tables (its 192 schedule 576 / 300 / 200 / 110 averages 191 over 32
layers); counts per stage from schedule.py, each stage's c included in its count.

Departures:
  1. Raters are chosen at each stage from the states entering it (the reference: once, from the LLM input
     embeddings).
  2. Scores from the layer's q / k recomputed as one [h, raters, T] product (the reference asks the layer for its
     full eager attention map).
  3. No random noise in the densities (the reference adds 1e-6 uniform noise to break ties): ties go to the lower
     index, so runs are deterministic.
  4. Layers scale with depth (l / 32, at least 1); per image for several images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cdpruner import instruction_positions
from .llm_pruning import LLMPruner, SampleView, Selection, Stage
from .schedule import mean_schedule, stage_layers
from .spec import INSIDE_LLM, LAYER_MEAN, MethodSpec, Option, Parts

LAYERS = (3, 7, 16)  # inputs of the layers after the reference's 2, 6, 15 (32 layers)
RECYCLED_FRACTION = 0.3  # of the deleted tokens, the reference's "top 30 %"


def recycled_count(tokens: int, keep: int) -> int:
    """c, the recycled tokens among `keep` when `tokens` enter the stage (the reference's sizes, solved for c)."""
    if keep >= tokens or keep == 1:
        return 0
    for count in range(1, keep):
        candidates = int((tokens - (keep - count)) * RECYCLED_FRACTION) + 1
        if int(candidates / 10) + 1 == count:
            return count
    return 1


def density_peak_centres(x: torch.Tensor, count: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN (Du et al. 2016, as SparseVLM and HoliTom use it): `count` centre indices of x [N, C] and the
    scaled distance matrix [N, N]."""
    distance = torch.cdist(x.float(), x.float()) / x.shape[-1] ** 0.5  # [N, N]
    nearest = distance.topk(min(k, x.shape[0]), dim=-1, largest=False).values  # [N, k]
    density = (-(nearest**2).mean(dim=-1)).exp()  # [N]
    index = torch.arange(x.shape[0], device=x.device)
    # "higher density" with ties broken by the lower index (the reference adds noise instead)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None] < index[:, None])
    )
    parent_distance = distance.masked_fill(~denser, torch.inf).min(dim=-1).values
    parent_distance = torch.where(torch.isinf(parent_distance), distance.max(), parent_distance)
    return (parent_distance * density).topk(count).indices, distance


def cluster_merge(x: torch.Tensor, count: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C] -> (centre indices [count], cluster means [count, C]); each token joins its nearest centre."""
    centres, distance = density_peak_centres(x, count, k)
    assignment = distance[:, centres].argmin(dim=1)  # [N]
    assignment[centres] = torch.arange(count, device=x.device)
    weights = torch.zeros(count, x.shape[0], device=x.device).scatter_(0, assignment[None], 1.0)  # [count, N]
    # [count, C] <- [count, N] @ [N, C]
    return centres, (weights @ x.float()) / weights.sum(dim=1, keepdim=True)


def rater_positions(view: SampleView) -> torch.Tensor:
    """Instruction tokens whose relevance to the sample's visual tokens is above the mean."""
    text = instruction_positions(view)
    visual = view.hidden[view.blocks.flatten()].float()  # [nV, D]
    relevance = (visual @ view.hidden[text].float().T).softmax(dim=1).mean(dim=0)  # [t]
    raters = text[relevance > relevance.mean()]
    return raters if raters.numel() else text


@dataclass(frozen=True)
class SparseVLMSelector:
    needs_attention: bool = True

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        scores = view.attention(rater_positions(view)).mean(dim=0)  # [T]
        positions, states = [], []
        for block in view.blocks:
            recycled = recycled_count(block.numel(), keep)
            order = scores[block].argsort(descending=True)
            kept = block[order[: keep - recycled]]
            positions.append(kept)
            states.append(view.hidden[kept])
            if recycled:
                deleted = block[order[keep - recycled :]]
                candidates = deleted[: int(deleted.numel() * RECYCLED_FRACTION) + 1]  # deleted is score-ordered
                centres, merged = cluster_merge(view.hidden[candidates], recycled, k=recycled)
                positions.append(candidates[centres])
                states.append(merged.to(view.hidden.dtype))
        return Selection(torch.cat(positions), torch.cat(states))


def sparsevlm(
    budget: int, num_layers: int, layers: tuple[int, ...], num_patches: int, image_token_id: int
) -> LLMPruner:
    """Stages at `layers` (the paper's LAYERS scaled to the LLM's depth, or the `layers` option) whose layer mean
    over the LLM is the budget."""
    counts = mean_schedule(budget, num_layers, num_patches, layers, "sparsevlm")
    stages = tuple(Stage(layer, count) for layer, count in zip(layers, counts, strict=True))
    return LLMPruner(stages, SparseVLMSelector(), num_patches, image_token_id)


__all__ = ["LAYERS", "SparseVLMSelector", "cluster_merge", "density_peak_centres", "recycled_count", "sparsevlm"]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_layers = model.config.text_config.num_hidden_layers
    layers = stage_layers(options, LAYERS, num_layers)
    return Parts(pruner=sparsevlm(budget, num_layers, layers, model.config.num_patches, model.config.image_token_id))


SPEC = MethodSpec(
    "sparsevlm",
    "text-guided pruning with recycled clusters of the deleted tokens (Zhang et al., ICML 2025, arXiv 2410.04417)",
    acts=(INSIDE_LLM,),
    where=f"inside the LLM at layers {' / '.join(map(str, LAYERS))} (scaled)",
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(Option("layers", str, None, "comma-separated decoder layers; default the paper's, scaled"),),
    paper_layers=LAYERS,
    paper="pruning_loc 2 / 6 / 15 of 32, 576 / 300 / 200 / 110 tokens at 192, top 30 % recycled (llmc's port)",
    reference="Gumpest/SparseVLMs @ 26a5f48",
)
