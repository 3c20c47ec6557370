"""`holitom`: holistic token merging for video: temporal then spatial merging at the LLM input (outer-LLM), then
similarity merging inside the LLM (inner-LLM).

Shao, Tao, Qin, You, Sui, Wang. "HoliTom: Holistic Token Merging for Fast Video Large Language Models." NeurIPS
2025, arXiv 2505.21334. References: the outer stage as ported in ModelTC/llmc (`token_reduction/holitom.py`:
`select_static_windows`, `cluster_dpc_knn`, `merge_tokens_by_clustering`); the inner stage as in the authors'
cokeshao/HoliTom (`holitom/modeling_qwen2.py`, the `HOLITOM_k` / `HOLITOM_r` branch of the decoder loop).

Glossary: F frames of one sample (its images, in prompt order), P tokens per frame, K0 tokens per frame entering the
LLM (on average: a sample keeps F K0), K1 per frame from LLM layer l on, L decoder layers, K the budget, tau the
static threshold, W the longest window, r the inner merge ratio.

Outer-LLM stage, at LLM layer 0, as the llmc port:
  1. temporal segmentation: with s[f, p] = cos(x[f, p], x[f + 1, p]), a window [i, j] of frames saves
     (j - i) x #{p : s[f, p] > tau for f in i..j-1} tokens (a static position is kept once for the window); a
     dynamic programme over frames picks the windows (length 2..W) that save the most (`select_static_windows`);
  2. temporal merging: in each window, a static position becomes one token, the mean over the window's frames, at
     the window's first frame;
  3. spatial merging of what is left, down to F K0, by DPC-kNN clustering (`cluster_dpc_knn`): each cluster becomes
     the mean of its centre and its members (the port's `NO_BETA` branch; its default blends centre and mean with a
     weight Beta we did not take).
Inner-LLM stage, at layer l (the reference's HOLITOM_k = 18 of Qwen2-7B's 28 layers, scaled to depth: 21 of 32),
as the authors' code: the last prompt token's attention in layer l - 1 (head mean) ranks all the sample's visual
tokens together; the top F K1 stay (K1 = K0 (1 - r), r = HOLITOM_r = 0.5); each other visual token, in prompt
order, merges into its most cosine-similar kept token as h_t <- (h_t + h_n) / 2 (similarities taken before any
merge); RoPE positions are the original ones.
Budget: the layer mean, as for the other staged in-LLM methods (HoliTom's tables count the tokens before the LLM):
K0 = round(K L / (l + (L - l)(1 - r))), K1 solved exactly (schedule.py); at the full budget nothing merges.
tau = 0.8 (the authors' scripts use T = 0.80, 0.65 at their smallest ratio) and W = 8 (ours).

Departures:
  1. Exactly F K0 tokens per sample: when temporal merging alone would go below F K0, only the most static
     positions (highest minimum similarity) merge, until F K0 is reached.
  2. Frames arrive as a sample's images (P placeholders each) and are merged in the LLM's input space (projected
     features); the references merge SigLIP features before the projector. Frames keep different numbers of
     tokens; the layer mean per frame is K. No random tie-breaking noise.
  3. The inner stage's attention row is recomputed in float32 from layer l - 1's q / k (the reference switches that
     layer to output attentions); F K1 with K1 a per-frame integer, where the reference rounds F K0 (1 - r).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import check_budget
from .llm_pruning import LLMPruner, SampleView, Selection, Stage
from .schedule import first_stage_tokens, llm_layer, mean_schedule
from .sparsevlm import cluster_merge
from .spec import INSIDE_LLM, LAYER_MEAN, LLM_INPUT, MethodSpec, Option, Parts

TAU = 0.8
MAX_WINDOW = 8
NEIGHBOURS = 7  # DPC-kNN's k, the reference's default
LAYER = 21  # the inner stage: HOLITOM_k = 18 of 28 layers, at the same depth of a 32-layer LLM
INNER_RATIO = 0.5  # HOLITOM_r: the share of the visual tokens merged away at layer l


def static_windows(similarity: torch.Tensor, tau: float, max_window: int) -> list[tuple[int, int]]:
    """Frame windows [(first, last)] covering 0..F-1 that save the most tokens; similarity [F - 1, P]. What each
    possible window saves is computed on the device and read by the host once; the dynamic programme runs on those
    integers."""
    frames = similarity.shape[0] + 1
    static = similarity > tau  # [F - 1, P]
    table: dict[tuple[int, int], int] = {}  # (first, length) -> tokens saved
    runs, counts = static, []  # runs [F - length + 1, P]: static over each window's length - 1 frame pairs
    for length in range(2, min(frames, max_window) + 1):
        if length > 2:
            runs = runs[:-1] & static[length - 2 :]
        counts.append(runs.sum(dim=1) * (length - 1))  # [F - length + 1]
    if counts:
        saved = iter(torch.cat(counts).tolist())  # the one host read, in the order of `counts`
        for length in range(2, min(frames, max_window) + 1):
            for first in range(frames - length + 1):
                table[first, length] = next(saved)

    best = [0] * (frames + 1)  # best[i]: the most saved over frames 0..i-1
    start = [0] * (frames + 1)
    for end in range(1, frames + 1):
        best[end], start[end] = best[end - 1], end - 1
        for length in range(2, min(end, max_window) + 1):
            value = best[end - length] + table[end - length, length]
            if value > best[end]:
                best[end], start[end] = value, end - length
    windows, end = [], frames
    while end > 0:
        windows.append((start[end], end - 1))
        end = start[end]
    return windows[::-1]


def temporal_merge(frames: torch.Tensor, tau: float, max_window: int, keep_total: int):
    """frames [F, P, D] -> (mask of tokens kept [F, P], their states [F, P, D]) after merging static positions,
    never below `keep_total` tokens. The host reads each window's minimum similarities once, picks the merges in
    the order of the most static, and hands them back as one mask."""
    count, patches, _ = frames.shape
    kept = torch.ones(count, patches, dtype=torch.bool, device=frames.device)
    states = frames.clone()
    if count < 2:
        return kept, states
    normed = F.normalize(frames.float(), dim=-1)
    similarity = (normed[:-1] * normed[1:]).sum(dim=-1)  # [F - 1, P]
    windows = [(first, last) for first, last in static_windows(similarity, tau, max_window) if last > first]
    if not windows:
        return kept, states
    minima = torch.stack([similarity[first:last].min(dim=0).values for first, last in windows]).tolist()  # [W][P]
    threshold = float(np.float32(tau))  # the device compares float32 similarities with tau cast to float32
    groups = [  # (min similarity, window, position)
        (value, window, position)
        for window, row in enumerate(minima)
        for position, value in enumerate(row)
        if value > threshold
    ]
    surplus = count * patches - keep_total
    merged = np.zeros((len(windows), patches), dtype=bool)
    for _, window, position in sorted(groups, key=lambda g: -g[0]):
        first, last = windows[window]
        if last - first > surplus:
            continue
        merged[window, position] = True
        surplus -= last - first
    chosen = torch.tensor(merged, device=frames.device)  # [W, P], one copy to the device
    for window, (first, last) in enumerate(windows):
        # a static position becomes the mean over the window's frames, at its first frame; [P, L, D] blocks, one per
        # position, add up as a per-position mean does (over [L, P, D] a small D rounds otherwise on CPU)
        mean = frames[first : last + 1].transpose(0, 1).contiguous().mean(dim=1)  # [P, D]
        mask = chosen[window]  # [P]
        states[first] = torch.where(mask[:, None], mean, states[first])
        kept[first + 1 : last + 1] &= ~mask
    return kept, states


def inner_merge(states: torch.Tensor, scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner-LLM merge of N visual tokens [N, D] in prompt order, ranked by scores [N]: (indices kept [keep],
    their merged states [keep, D]). Each dropped token n, in order, does h_t <- (h_t + h_n) / 2 on its most
    cosine-similar kept token t; in closed form a kept token with m joiners n_1 < ... < n_m ends as
    h_t / 2^m + sum_j h_(n_j) / 2^(m - j + 1)."""
    kept = scores.topk(keep).indices.sort().values  # [keep]
    dropped = torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
    dropped[kept] = False
    normed = F.normalize(states.float(), dim=-1)
    # [N - keep, keep] <- [N - keep, D] @ [D, keep]
    target = (normed[dropped] @ normed[kept].T).argmax(dim=1)  # [N - keep]
    joins = F.one_hot(target, keep).float()  # [N - keep, keep]
    later = joins.flip(0).cumsum(0).flip(0) - joins  # [N - keep, keep] joiners of the same token after this one
    weights = joins * torch.exp2(-(later + 1))  # [N - keep, keep]
    own = torch.exp2(-joins.sum(dim=0))  # [keep]
    # [keep, D] <- [keep] * [keep, D] + [keep, N - keep] @ [N - keep, D]
    merged = own[:, None] * states[kept].float() + weights.T @ states[dropped].float()
    return kept, merged.to(states.dtype)


@dataclass(frozen=True)
class HoliTomSelector:
    """Stage 0: the outer-LLM merge (per sample, frames together); stage 1: the inner-LLM merge."""

    tau: float = TAU
    max_window: int = MAX_WINDOW
    needs_attention: bool = True  # at the inner stage (layer l - 1's q / k); stage 0 reads none

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        total = view.blocks.shape[0] * keep
        if stage == 0:
            frames = view.hidden[view.blocks]  # [F, P, D]
            kept, states = temporal_merge(frames, self.tau, self.max_window, total)
            positions, states = view.blocks[kept], states[kept]  # [N], [N, D]
            if positions.numel() > total:
                centres, merged = cluster_merge(states, total, k=min(NEIGHBOURS, total))  # mean of centre + members
                positions, states = positions[centres], merged
            return Selection(positions, states.to(view.hidden.dtype))
        positions = view.blocks.flatten().sort().values  # [F K0] every frame's tokens, in prompt order
        last = torch.full((1,), view.hidden.shape[0] - 1, device=view.hidden.device)  # left padding: last is real
        kept, states = inner_merge(view.hidden[positions], view.attention(last)[0, positions], total)
        return Selection(positions[kept], states)


def holitom(budget: int, num_layers: int, layer: int, num_patches: int, image_token_id: int) -> LLMPruner:
    """HoliTom at a layer-mean budget: F K0 tokens from layer 0 (outer merge), F K1 from `layer` (inner merge)."""
    check_budget(budget, num_patches)
    first = first_stage_tokens(budget, num_layers, layer, num_patches, 1 - INNER_RATIO)
    (second,) = mean_schedule(budget, num_layers, first, (layer,), "holitom")
    stages = (Stage(0, first),) + ((Stage(layer, second),) if second < first else ())  # full budget: no inner stage
    return LLMPruner(stages, HoliTomSelector(needs_attention=len(stages) > 1), num_patches, image_token_id)


__all__ = ["INNER_RATIO", "LAYER", "HoliTomSelector", "holitom", "inner_merge", "static_windows", "temporal_merge"]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_layers = model.config.text_config.num_hidden_layers
    layer = llm_layer(options, LAYER, num_layers)
    return Parts(pruner=holitom(budget, num_layers, layer, model.config.num_patches, model.config.image_token_id))


SPEC = MethodSpec(
    "holitom",
    "holistic token merging of a video: temporal windows and clusters, then an inner merge (Shao et al., NeurIPS 2025)",
    acts=(LLM_INPUT, INSIDE_LLM),
    where=f"LLM input (layer 0), across a sample's frames, then LLM layer {LAYER} (18 of 28, scaled)",
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(Option("layer", int, None, "the inner stage's layer; default the paper's, scaled"),),
    paper_layers=(LAYER,),
    stage_keep=1 - INNER_RATIO,
    paper="HOLITOM_k = 18 of 28 layers, HOLITOM_r = 0.5 (the authors' scripts/eval_ov-7b_holitom.sh)",
    not_on_families="merges a video's equal-sized frames; the adapter feeds these families images of their own sizes",
    reference="cokeshao/HoliTom @ e9b2972 (inner stage); llmc's port (outer stage)",
)
