"""`sparsevlm`: text-guided progressive sparsification inside the LLM, with token recycling.

Zhang, Fan, Ma, et al. "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference."
ICML 2025 (arXiv 2410.04417). Reference: Gumpest/SparseVLMs @ 26a5f48 (its default version 1.0),
`llava/model/language_model/modelling_sparse_llama.py` (`LlamaDynamicvitModel.forward`, `pruning_loc = [2, 6,
15]`), `score.py` (`attn_postprocess_topk`, the per-budget tables) and `utils.py` (`cluster_and_merge`).

Glossary: V visual tokens of one image entering a stage, k kept by rank, m recycled candidates, c recycled tokens,
D LLM width.

As the reference, after layers 2, 6 and 15 (here: at the inputs of the layers after them, which is the same point):
  1. raters, chosen once from the LLM's input embeddings: the instruction tokens whose relevance to the image
     (softmax over the instruction of visual . text, mean over visual tokens) is above the mean;
  2. each visual token's score is the attention the raters pay it in that layer (mean over raters and heads);
  3. the top k stay, in order; of the deleted, the top 30 % by score (+1) are recycled: clustered by density-peak
     k-NN (DPC-kNN, k = c, Euclidean distances of the differences, 1e-6 uniform noise on the densities) into
     c = floor(m / 10) + 1 centres, each cluster averaged into one token (its sum over size + 1e-6);
  4. visual tokens from then on: the k kept, then the c recycled (in the order of their centres' scores), and the
     pruned prompt is renumbered 0..T'-1 (`position_ids[:, :len]`; decoding continues from there).
`tests/test_reducers_conformance_llm.py` checks every stage's kept tokens, the recycled tokens and the logits against
the reference's on the same inputs.
Budget: the layer mean, as the reference's own tables (its 192 schedule 576 / 300 / 200 / 110 averages 191 over 32
layers); counts per stage from schedule.py, each stage's c included in its count (k = count - c, where the reference
reads k from its table).

Departures:
  1. Scores from the layer's q / k recomputed as one [h, raters, T] product in float32 (the reference asks the layer
     for its full eager attention map, in the model's dtype).
  2. The density noise (uniform in [0, 1e-6), the reference's tie-breaking: mutual nearest neighbours have equal
     densities) comes from a generator seeded with the run's seed (`density_noise`), not from torch's global one.
  3. Layers scale with depth (l / 32, at least 1); per image for several images (raters from all the sample's
     images); a stage count no c fits exactly takes c = 1.
Options (ours): `raters="stage"` chooses the raters at each stage from the states entering it; `positions="original"`
puts each recycled token at its centre's place and keeps RoPE positions; `ties="index"` breaks density ties by the
lower index, without noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cdpruner import instruction_positions
from .llm_pruning import (
    ORIGINAL,
    RENUMBER,
    STAGE_LAYERS,
    LLMPruner,
    SampleView,
    Selection,
    Stage,
    staged_geometry,
    staged_where,
)
from .schedule import mean_schedule
from .spec import INSIDE_LLM, LAYER_MEAN, MethodSpec, Option, Parts, given

LAYERS = (3, 7, 16)  # inputs of the layers after the reference's 2, 6, 15 (32 layers)
RECYCLED_FRACTION = 0.3  # of the deleted tokens, the reference's "top 30 %"
INPUT, STAGE = "input", "stage"  # where the raters are chosen: the LLM's input (the reference) or each stage
NOISE, INDEX = "noise", "index"  # density ties: broken by uniform noise in [0, 1e-6) (the references) or by index
NOISE_SCALE = 1e-6  # the references' `torch.rand(...) * 1e-6`


def density_noise(count: int, seed: int, device) -> torch.Tensor:
    """The references' density noise, uniform in [0, 1e-6), [count]: drawn on the CPU from a generator seeded with
    the method's seed (each clustering draws the same stream's first `count`), so it depends on the seed only."""
    return (torch.rand(count, generator=torch.Generator().manual_seed(seed)) * NOISE_SCALE).to(device)


def recycled_count(tokens: int, keep: int) -> int:
    """c, the recycled tokens among `keep` when `tokens` enter the stage (the reference's sizes, solved for c)."""
    if keep >= tokens or keep == 1:
        return 0
    for count in range(1, keep):
        candidates = int((tokens - (keep - count)) * RECYCLED_FRACTION) + 1
        if int(candidates / 10) + 1 == count:
            return count
    return 1


def density_peak_centres(
    x: torch.Tensor, count: int, k: int, exact: bool = False, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN (Du et al. 2016, as SparseVLM and HoliTom use it): `count` centre indices of x [N, C] (by descending
    score) and the scaled distance matrix [N, N]. exact: distances from the differences (SparseVLM's
    `(x1 - x2).norm`), not through the matrix product `torch.cdist` uses above 25 rows (HoliTom's). noise [N]: added
    to the densities as the references do (`density_noise`), or None to break ties by the lower index (mutual
    nearest neighbours have exactly equal densities at small k)."""
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    distance = torch.cdist(x.float(), x.float(), compute_mode=mode) / x.shape[-1] ** 0.5  # [N, N]
    nearest = distance.topk(min(k, x.shape[0]), dim=-1, largest=False).values  # [N, k]
    density = (-(nearest**2).mean(dim=-1)).exp()  # [N]
    if noise is not None:
        density = density + noise
        denser = density[None, :] > density[:, None]  # [N, N]: j denser than i
    else:
        index = torch.arange(x.shape[0], device=x.device)
        denser = (density[None, :] > density[:, None]) | (
            (density[None, :] == density[:, None]) & (index[None] < index[:, None])
        )
    parent_distance = distance.masked_fill(~denser, torch.inf).min(dim=-1).values
    parent_distance = torch.where(torch.isinf(parent_distance), distance.max(), parent_distance)
    return (parent_distance * density).topk(count).indices, distance


def cluster_merge(
    x: torch.Tensor,
    count: int,
    k: int,
    exact: bool = False,
    epsilon: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C] -> (centre indices [count] by descending score, cluster means [count, C]); each token joins its
    nearest centre; a cluster's mean is its sum over (size + epsilon) (SparseVLM's `all_weight + 1e-6`)."""
    centres, distance = density_peak_centres(x, count, k, exact, noise)
    assignment = distance[:, centres].argmin(dim=1)  # [N]
    assignment[centres] = torch.arange(count, device=x.device)
    weights = torch.zeros(count, x.shape[0], device=x.device).scatter_(0, assignment[None], 1.0)  # [count, N]
    # [count, C] <- [count, N] @ [N, C]
    return centres, (weights @ x.float()) / (weights.sum(dim=1, keepdim=True) + epsilon)


TIES = Option(  # shared with HoliTom, whose clustering is the same DPC-kNN
    "ties",
    str,
    NOISE,
    "DPC-kNN density ties: uniform noise in [0, 1e-6) drawn from the run's seed (the reference's noise, "
    "reproducible) or the lower index",
    (NOISE, INDEX),
)


def rater_positions(view: SampleView) -> torch.Tensor:
    """Instruction tokens whose relevance to the sample's visual tokens is above the mean (positions of `view`)."""
    text = instruction_positions(view)
    visual = view.hidden[view.blocks.flatten()].float()  # [nV, D]
    relevance = (visual @ view.hidden[text].float().T).softmax(dim=1).mean(dim=0)  # [t]
    raters = text[relevance > relevance.mean()]
    return raters if raters.numel() else text


@dataclass(frozen=True)
class SparseVLMSelector:
    raters: str = INPUT  # INPUT: chosen from the LLM's input embeddings (the reference); STAGE: from each stage's
    ordered: bool = True  # the recycled tokens after the kept ones (the reference); False: at their centres' places
    ties: str = NOISE  # NOISE: density noise from `seed` (the reference's, reproducible); INDEX: the lower index
    seed: int = 0
    needs_attention: bool = True

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        if self.raters == INPUT:  # the input's rater positions, found in the current sequence (text is never pruned)
            raters = torch.isin(view.origin, rater_positions(view.inputs)).nonzero().squeeze(1)
        else:
            raters = rater_positions(view)
        scores = view.attention(raters).mean(dim=0)  # [T]
        positions, states = [], []
        for block in view.blocks:
            recycled = recycled_count(block.numel(), keep)
            order = scores[block].argsort(descending=True)
            kept = block[order[: keep - recycled]].sort().values
            positions.append(kept)
            states.append(view.hidden[kept])
            if recycled:
                deleted = block[order[keep - recycled :]]
                candidates = deleted[: int(deleted.numel() * RECYCLED_FRACTION) + 1]  # deleted is score-ordered
                noise = density_noise(candidates.numel(), self.seed, candidates.device) if self.ties == NOISE else None
                centres, merged = cluster_merge(
                    view.hidden[candidates], recycled, recycled, exact=True, epsilon=1e-6, noise=noise
                )
                positions.append(candidates[centres])
                states.append(merged.to(view.hidden.dtype))
        return Selection(torch.cat(positions), torch.cat(states), ordered=self.ordered)


def sparsevlm(
    budget: int,
    num_layers: int,
    layers: tuple[int, ...],
    num_patches: int,
    image_token_id: int,
    *,
    raters: str = INPUT,
    positions: str = RENUMBER,
    ties: str = NOISE,
    seed: int = 0,
) -> LLMPruner:
    """Stages at `layers` (the paper's LAYERS scaled to the LLM's depth, or the `layers` option) whose layer mean
    over the LLM is the budget."""
    counts = mean_schedule(budget, num_layers, num_patches, layers, "sparsevlm")
    renumber = positions == RENUMBER
    stages = tuple(Stage(layer, count, renumber) for layer, count in zip(layers, counts, strict=True))
    selector = SparseVLMSelector(raters, ordered=renumber, ties=ties, seed=seed)
    return LLMPruner(stages, selector, num_patches, image_token_id, keeps_inputs=raters == INPUT)


__all__ = [
    "LAYERS",
    "SparseVLMSelector",
    "cluster_merge",
    "TIES",
    "density_noise",
    "density_peak_centres",
    "rater_positions",
    "recycled_count",
    "sparsevlm",
]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    chosen = given(options, "raters", "positions", "ties")
    pruner = sparsevlm(budget, *staged_geometry(model, options, LAYERS), seed=seed, **chosen)
    return Parts(pruner=pruner)


SPEC = MethodSpec(
    "sparsevlm",
    "text-guided pruning with recycled clusters of the deleted tokens (Zhang et al., ICML 2025, arXiv 2410.04417)",
    acts=(INSIDE_LLM,),
    where=staged_where(LAYERS),
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(
        STAGE_LAYERS,
        Option(
            "raters",
            str,
            INPUT,
            "choose the rating instruction tokens once from the LLM's input (the reference) or at each stage",
            (INPUT, STAGE),
        ),
        Option(
            "positions",
            str,
            RENUMBER,
            "the recycled tokens after the kept ones in a prompt renumbered 0..T'-1 (the reference), or each at its "
            "centre's place with every token's RoPE position kept",
            (RENUMBER, ORIGINAL),
        ),
        TIES,
    ),
    paper_layers=LAYERS,
    paper="pruning_loc 2 / 6 / 15 of 32, 576 / 300 / 200 / 110 tokens at 192, top 30 % recycled (score.py, "
    "modelling_sparse_llama.py)",
    reference="Gumpest/SparseVLMs @ 26a5f48",
)
