"""`holitom`: holistic token merging for video, temporal then spatial, at the LLM input.

Shao, Wang, et al. "HoliTom: Holistic Token Merging for Fast Video Large Language Models." arXiv 2505.21334.
Reference: as ported in ModelTC/llmc (`token_reduction/holitom.py`: `select_static_windows`, `cluster_dpc_knn`,
`merge_tokens_by_clustering`).

Glossary: F frames of one sample (its images, in prompt order), P tokens per frame, K the budget (tokens per frame
on average: a sample keeps F K), tau the static threshold, W the longest window.

As the reference:
  1. temporal segmentation: with s[f, p] = cos(x[f, p], x[f + 1, p]), a window [i, j] of frames saves
     (j - i) x #{p : s[f, p] > tau for f in i..j-1} tokens (a static position is kept once for the window); a
     dynamic programme over frames picks the windows (length 2..W) that save the most (`select_static_windows`);
  2. temporal merging: in each window, a static position becomes one token, the mean over the window's frames, at
     the window's first frame;
  3. spatial merging of what is left, down to F K, by DPC-kNN clustering (`cluster_dpc_knn`): each cluster becomes
     the mean of its centre and its members (the reference's `NO_BETA` branch; its default blends centre and mean
     with a weight Beta we did not take).
Defaults tau = 0.8 and W = 8: ours (the reference reads them from its configuration).

Departures:
  1. Exactly F K tokens per sample: when temporal merging alone would go below F K, only the most static
     positions (highest minimum similarity) merge, until F K is reached.
  2. On the per-frame path: frames arrive as a sample's images (P placeholders each) and are merged in the LLM's
     input space (projected features), a stage at LLM layer 0; the reference merges SigLIP features before its
     projector, and also prunes inside the LLM (not implemented).
  3. Frames keep different numbers of tokens; the layer mean per frame is K. No random tie-breaking noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .llm_pruning import SampleView, Selection
from .sparsevlm import cluster_merge

TAU = 0.8
MAX_WINDOW = 8
NEIGHBOURS = 7  # DPC-kNN's k, the reference's default


def static_windows(similarity: torch.Tensor, tau: float, max_window: int) -> list[tuple[int, int]]:
    """Frame windows [(first, last)] covering 0..F-1 that save the most tokens; similarity [F - 1, P]."""
    frames = similarity.shape[0] + 1
    static = similarity > tau

    def saved(first: int, last: int) -> int:
        return int(static[first:last].all(dim=0).sum()) * (last - first)

    best = [0] * (frames + 1)  # best[i]: the most saved over frames 0..i-1
    start = [0] * (frames + 1)
    for end in range(1, frames + 1):
        best[end], start[end] = best[end - 1], end - 1
        for length in range(2, min(end, max_window) + 1):
            value = best[end - length] + saved(end - length, end - 1)
            if value > best[end]:
                best[end], start[end] = value, end - length
    windows, end = [], frames
    while end > 0:
        windows.append((start[end], end - 1))
        end = start[end]
    return windows[::-1]


def temporal_merge(frames: torch.Tensor, tau: float, max_window: int, keep_total: int):
    """frames [F, P, D] -> (mask of tokens kept [F, P], their states [F, P, D]) after merging static positions,
    never below `keep_total` tokens."""
    count, patches, _ = frames.shape
    kept = torch.ones(count, patches, dtype=torch.bool, device=frames.device)
    states = frames.clone()
    if count < 2:
        return kept, states
    normed = F.normalize(frames.float(), dim=-1)
    similarity = (normed[:-1] * normed[1:]).sum(dim=-1)  # [F - 1, P]
    groups = []  # (min similarity, first, last, position)
    for first, last in static_windows(similarity, tau, max_window):
        if last == first:
            continue
        window_min = similarity[first:last].min(dim=0).values  # [P]
        groups += [(float(window_min[p]), first, last, p) for p in (window_min > tau).nonzero().flatten().tolist()]
    surplus = count * patches - keep_total
    for _, first, last, position in sorted(groups, key=lambda g: -g[0]):
        if last - first > surplus:
            continue
        states[first, position] = frames[first : last + 1, position].mean(dim=0)
        kept[first + 1 : last + 1, position] = False
        surplus -= last - first
    return kept, states


@dataclass(frozen=True)
class HoliTomSelector:
    tau: float = TAU
    max_window: int = MAX_WINDOW
    needs_attention: bool = False

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        frames = view.hidden[view.blocks]  # [F, P, D]
        total = view.blocks.shape[0] * keep
        kept, states = temporal_merge(frames, self.tau, self.max_window, total)
        positions, states = view.blocks[kept], states[kept]  # [N], [N, D]
        if positions.numel() > total:
            centres, merged = cluster_merge(states, total, k=min(NEIGHBOURS, total))  # mean of centre + members
            positions, states = positions[centres], merged
        return Selection(positions, states.to(view.hidden.dtype))


__all__ = ["HoliTomSelector", "static_windows", "temporal_merge"]
