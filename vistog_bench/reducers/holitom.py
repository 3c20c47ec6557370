"""`holitom`: holistic token merging for video: temporal and spatial merging at the LLM input (outer-LLM), then
similarity merging inside the LLM (inner-LLM).

Shao, Tao, Qin, You, Sui, Wang. "HoliTom: Holistic Token Merging for Fast Video Large Language Models." NeurIPS
2025, arXiv 2505.21334. Reference: cokeshao/HoliTom @ e9b2972: the outer stage in `holitom/llava_arch.py`
(`prepare_inputs_labels_for_multimodal`'s video branch, `select_static_windows`, `get_static_dynamic_features`,
`holitom`, `merge_tokens_by_attention_density`, `merge_tokens_by_density`, `cluster_dpc_knn`,
`merge_tokens_by_clustering`), the inner stage in `holitom/modeling_qwen2.py` (the `HOLITOM_k` branch of the decoder
loop); defaults from `scripts/eval_ov-7b_holitom.sh` and the code's environment defaults.

Glossary: F frames of one sample (its images, in prompt order), P tokens per frame, K0 tokens per frame entering the
LLM (on average: a sample keeps F K0), K1 per frame from LLM layer l on, L decoder layers, K the budget, tau the
static threshold, W the longest window, r' the retain ratio after temporal merging, S a window's static positions.

Outer-LLM stage, at LLM layer 0 (on the projected features, as the reference's `encode_images_multi`), as the
reference:
  1. temporal segmentation: with s[f, p] = cos(x[f, p], x[f + 1, p]), a window [i, j] of frames saves
     (j - i) x #{p : s[f, p] > tau for f in i..j-1} tokens; a dynamic programme over frames picks the windows
     (length 2..W) that save the most, R in all (`select_static_windows`);
  2. r' = (K0 / P) / ((F P - R) / (F P)), at most 1: the ratio the remaining tokens keep;
  3. per window: its static positions become one token each, the mean over the window's frames; those S tokens are
     clustered by DPC-kNN (k = 7, 1e-6 uniform noise on the densities) into round(S r') centres (in position
     order), each cluster token Beta x centre + (1 - Beta) x the mean of its other members (Beta = 0.6; a centre
     alone stays itself);
  4. per frame: its dynamic positions keep their ceil(n r') tokens with the highest vision attention (the attention
     each patch receives at the vision feature layer, mean over heads and queries, as the reference's SigLIP tower
     returns `attentions[-1].mean(1).mean(1)`; here CLIP's feature layer, its CLS column dropped), unchanged;
  5. the video's tokens enter the LLM as a compact prompt, renumbered 0..T'-1: per window, the static tokens (at the
     window's first frame), then each frame's dynamic tokens, in position order.
Inner-LLM stage, at layer l (the reference's HOLITOM_k = 18 of Qwen2-7B's 28 layers, scaled to depth: 21 of 32),
as the reference: the last prompt token's attention in layer l - 1 (head mean) ranks all the sample's visual tokens
together; the top F K1 stay; each other visual token, in prompt order, merges into its most cosine-similar kept
token as h_t <- (h_t + h_n) / 2 (similarities taken before any merge); positions are those of the compact prompt.
`tests/test_reducers_conformance_llm.py` checks both stages against the reference's functions on a five-frame video.
Budget: the layer mean, as for the other staged in-LLM methods (HoliTom's tables count the tokens before the LLM):
K0 = round(K L / (l + (L - l)(1 - r))), r = HOLITOM_r = 0.5, K1 solved exactly (schedule.py); at the full budget
nothing merges. tau = 0.8 (the scripts' T, 0.65 at their smallest ratio), W = 1024 (MAX_WINDOW_SIZE's default),
Beta = 0.6 (BETA), k = 7 (K), D = 0 (no contextual tokens among the dynamic ones).

Departures:
  1. Exactly F K0 tokens per sample (the budget contract): the reference's counts (round / ceil per group) can differ
     by a few; the difference is taken from (or given to) the dynamic frames with the largest rounding excess (the
     lowest-attention pick of each goes first), static clusters only when no dynamic token can; when the temporal
     merge alone leaves fewer than F K0 tokens (the reference keeps fewer then), static positions go back to dynamic,
     window by window, least static first (the lowest similarity across the window).
  2. Frames arrive as a sample's images (P placeholders each, no pooling: LLaVA-1.5 sends its 24 x 24 grid); frames
     keep different numbers of tokens; the layer mean per frame is K.
  3. The inner stage's attention row is recomputed in float32 from layer l - 1's q / k (the reference switches that
     layer to output attentions); F K1 with K1 a per-frame integer, where the reference rounds F K0 (1 - r); the
     vision attention likewise from the feature layer's hooked q / k in float32.
  4. The density noise comes from a generator seeded with the run's seed (sparsevlm.py's `density_noise`).
Options (ours): `outer="cluster"` merges static positions in time and clusters all remaining tokens together (DPC-kNN,
mean of centre and members), the former behaviour (with `max_window=8`, `ties="index"`, `positions="original"`);
`positions="original"` keeps every token's RoPE position; `ties="index"` breaks density ties by index;
`max_window` bounds the windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import check_budget
from .family_attention import mean_received_attention
from .llm_pruning import ORIGINAL, RENUMBER, LLMPruner, SampleView, Selection, Stage
from .schedule import first_stage_tokens, llm_layer, mean_schedule
from .sparsevlm import NOISE, TIES, cluster_merge, density_noise, density_peak_centres
from .spec import INSIDE_LLM, LAYER_MEAN, LLM_INPUT, MethodSpec, Option, Parts, given
from .vscan import EncoderLayerAttention

TAU = 0.8
MAX_WINDOW = 1024  # MAX_WINDOW_SIZE's default: windows as long as the video
NEIGHBOURS = 7  # DPC-kNN's k (K)
BETA = 0.6  # a static cluster token's share of its centre (BETA)
LAYER = 21  # the inner stage: HOLITOM_k = 18 of 28 layers, at the same depth of a 32-layer LLM
INNER_RATIO = 0.5  # HOLITOM_r: the share of the visual tokens merged away at layer l
REFERENCE, CLUSTER = "reference", "cluster"  # the outer stage: the authors' rule, or our former cluster-everything


def window_table(similarity: torch.Tensor, tau: float, max_window: int) -> dict[tuple[int, int], int]:
    """(first frame, length) -> tokens that window saves, for every window of 2..W frames; similarity [F - 1, P].
    Computed on the device and read by the host once."""
    frames = similarity.shape[0] + 1
    static = similarity > tau  # [F - 1, P]
    table: dict[tuple[int, int], int] = {}
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
    return table


def best_windows(table: dict[tuple[int, int], int], frames: int, max_window: int) -> list[tuple[int, int]]:
    """The windows [(first, last)] covering 0..F-1 that save the most (`select_static_windows`'s dynamic programme:
    the shortest window wins a tie, a lone frame the ties with it)."""
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


def static_windows(similarity: torch.Tensor, tau: float, max_window: int) -> list[tuple[int, int]]:
    """Frame windows [(first, last)] covering 0..F-1 that save the most tokens; similarity [F - 1, P]."""
    return best_windows(window_table(similarity, tau, max_window), similarity.shape[0] + 1, max_window)


def frame_similarity(frames: torch.Tensor) -> torch.Tensor:
    """cos(x[f, p], x[f + 1, p]) of frames [F, P, D] -> [F - 1, P] float32 (the reference's `cosine_similarity` of
    the normalised features)."""
    normed = F.normalize(frames.float(), p=2, dim=-1)
    return F.cosine_similarity(normed[:-1], normed[1:], dim=-1)


@dataclass(frozen=True)
class OuterPlan:
    """The outer stage's counts, decided on the host: per window its static positions (`static`, after the ones
    sent back to dynamic, `demoted`) and static tokens (`clusters`); per frame its dynamic tokens (`dynamic`)."""

    windows: list[tuple[int, int]]
    static: list[int]
    demoted: list[int]
    clusters: list[int]
    dynamic: list[int]


def outer_plan(table: dict, windows: list[tuple[int, int]], patches: int, keep: int) -> OuterPlan:
    """The reference's counts for F frames of P tokens at K0 = `keep` per frame (r' = (K0 / P) / ((F P - R) / F P),
    round(S r') static clusters per window, ceil(n r') dynamic tokens per frame), made to add up to F K0
    (departure 1 of the module)."""
    frames = windows[-1][1] + 1
    total, target = frames * patches, frames * keep
    static = [table[first, last - first + 1] // (last - first) if last > first else 0 for first, last in windows]
    demoted = [0] * len(windows)
    remaining = total - sum((last - first) * s for (first, last), s in zip(windows, static, strict=True))
    for w, (first, last) in enumerate(windows):  # the temporal merge alone would go below F K0: demote
        if remaining < target and last > first:
            demoted[w] = min(static[w], math.ceil((target - remaining) / (last - first)))
            static[w] -= demoted[w]
            remaining += demoted[w] * (last - first)
    ratio = min((keep / patches) / (remaining / total), 1)  # the reference's expression, in float64
    clusters = [round(s * ratio) for s in static]
    window_of = [w for w, (first, last) in enumerate(windows) for _ in range(first, last + 1)]
    sizes = [patches - static[w] for w in window_of]  # dynamic positions of each frame
    dynamic = [math.ceil(n * ratio) for n in sizes]
    excess = sum(clusters) + sum(dynamic) - target
    # the difference from the dynamic frames first, the largest rounding excess (or shortfall) first, then statics
    for counts, quotas, caps in (
        (dynamic, [n * ratio for n in sizes], sizes),
        (clusters, [s * ratio for s in static], static),
    ):
        while excess:
            step = 1 if excess > 0 else -1
            order = sorted(range(len(counts)), key=lambda g: -step * (counts[g] - quotas[g]))
            movable = [g for g in order if (counts[g] > 0 if step > 0 else counts[g] < caps[g])]
            if not movable:
                break
            for g in movable[: abs(excess)]:
                counts[g] -= step
                excess -= step
    return OuterPlan(windows, static, demoted, clusters, dynamic)


def beta_merge(
    x: torch.Tensor, count: int, beta: float, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A window's static tokens x [S, D] -> (centres in position order [count], tokens [count, D]): DPC-kNN centres
    (`cluster_dpc_knn`), every other token joins its nearest centre, a token is beta x its centre + (1 - beta) x the
    mean of its other members (`merge_tokens_by_clustering`), or the centre alone."""
    centres, distance = density_peak_centres(x, count, min(NEIGHBOURS, count), noise=noise)
    centres = centres.sort().values  # [count]
    member = torch.ones(x.shape[0], dtype=torch.bool, device=x.device).index_fill(0, centres, False)  # [S]
    nearest = distance[:, centres].argmin(dim=1)  # [S]
    weights = F.one_hot(nearest, count).T.float() * member  # [count, S]
    sizes = weights.sum(dim=1, keepdim=True)  # [count, 1]
    # [count, D] <- [count, S] @ [S, D]
    members = (weights @ x.float()) / sizes.clamp(min=1)
    centre = x[centres].float()
    return centres, torch.where(sizes > 0, beta * centre + (1 - beta) * members, centre)


def outer_merge(
    frames: torch.Tensor,
    attention: torch.Tensor,
    keep: int,
    tau: float,
    max_window: int,
    beta: float,
    seed: int | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reference's outer stage on frames [F, P, D] (projected) with vision attention [F, P]: per frame, the
    indices of the tokens it keeps [k_f] into its P and their states [k_f, D], in the order they enter the LLM
    (a window's static tokens first at its first frame, then each frame's dynamic tokens, each in position order);
    F K0 tokens in all. seed: the density noise's (None: ties by index). One host read (the window table)."""
    count, patches, _ = frames.shape
    similarity = frame_similarity(frames) if count > 1 else frames.new_zeros(0, patches, dtype=torch.float32)
    table = window_table(similarity, tau, max_window)
    plan = outer_plan(table, best_windows(table, count, max_window), patches, keep)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    frame = 0
    for w, (first, last) in enumerate(plan.windows):
        static = torch.zeros(patches, dtype=torch.bool, device=frames.device)
        if last > first:
            minimum = similarity[first:last].min(dim=0).values  # [P] how static each position is over the window
            static = minimum > tau
            if plan.demoted[w]:  # the least static go back to dynamic
                least = minimum.masked_fill(~static, torch.inf).topk(plan.demoted[w], largest=False).indices
                static = static.index_fill(0, least, False)
        order = torch.argsort(static.to(torch.int8), descending=True, stable=True)  # [P] static first, in order
        static_at, dynamic_at = order[: plan.static[w]], order[plan.static[w] :].sort().values
        if plan.clusters[w]:
            means = frames[first : last + 1][:, static_at].mean(dim=0)  # [S, D] a static position over the window
            noise = None if seed is None else density_noise(plan.static[w], seed, frames.device)
            centres, tokens = beta_merge(means, plan.clusters[w], beta, noise)
            first_static = (static_at[centres], tokens.to(frames.dtype))
        scores = attention[first : last + 1][:, dynamic_at]  # [W, n]
        top = scores.topk(max(plan.dynamic[frame : frame + last - first + 1]), dim=1).indices  # [W, k] descending
        for row in range(last - first + 1):
            picked = dynamic_at[top[row, : plan.dynamic[frame]]].sort().values  # [d_f]
            indices, states = picked, frames[first + row, picked]
            if row == 0 and plan.clusters[w]:
                indices, states = torch.cat([first_static[0], picked]), torch.cat([first_static[1], states])
            kept.append((indices, states))
            frame += 1
    return kept


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


@dataclass(eq=False)
class ReceivedAttention(EncoderLayerAttention):
    """The attention each patch receives at one encoder layer (the feature layer), mean over heads and queries, from
    its hooked q / k in float32: HoliTom's vision attention (`attentions[-1].mean(1).mean(1)` of its tower)."""

    _received: tuple = field(default=(None, None), repr=False)  # (the k_proj output it was computed from, [N, P])

    @property
    def scores(self) -> str:
        return f"the attention each patch receives at encoder layer {self.layer_index} (mean over heads and queries)"

    def take(self) -> torch.Tensor:
        """The latest forward's [N, P] (N images in pixel_values order), computed once per forward."""
        key = self._outputs.get("k_proj")
        if self._received[0] is not key or key is None:
            query, keys = self.query_key()
            self._received = (key, mean_received_attention(query, keys, self._scale)[:, 1:])
        return self._received[1]


@dataclass(frozen=True)
class HoliTomSelector:
    """Stage 0: the outer-LLM merge (per sample, frames together); stage 1: the inner-LLM merge."""

    vision: ReceivedAttention | None = None  # the outer stage's vision attention (REFERENCE)
    outer: str = REFERENCE
    tau: float = TAU
    max_window: int = MAX_WINDOW
    beta: float = BETA
    ties: str = NOISE
    seed: int = 0
    ordered: bool = True  # the reference's order of the outer stage's tokens (with a renumbered prompt)
    needs_attention: bool = True  # at the inner stage (layer l - 1's q / k); stage 0 reads none

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        total = view.blocks.shape[0] * keep
        if stage == 0:
            return self._outer(view, keep, total)
        positions = view.blocks.flatten().sort().values  # [F K0] every frame's tokens, in prompt order
        last = torch.full((1,), view.hidden.shape[0] - 1, device=view.hidden.device)  # left padding: last is real
        kept, states = inner_merge(view.hidden[positions], view.attention(last)[0, positions], total)
        return Selection(positions[kept], states)

    def _outer(self, view: SampleView, keep: int, total: int) -> Selection:
        frames = view.hidden[view.blocks]  # [F, P, D]
        seed = self.seed if self.ties == NOISE else None
        if self.outer == REFERENCE:
            attention = self.vision.take()[view.first_image : view.first_image + frames.shape[0]]  # [F, P]
            kept = outer_merge(frames, attention, keep, self.tau, self.max_window, self.beta, seed)
            positions = torch.cat([block[indices] for block, (indices, _) in zip(view.blocks, kept, strict=True)])
            states = torch.cat([states for _, states in kept])
            return Selection(positions, states, ordered=self.ordered)
        kept, states = temporal_merge(frames, self.tau, self.max_window, total)
        positions, states = view.blocks[kept], states[kept]  # [N], [N, D]
        if positions.numel() > total:  # each cluster: the mean of its centre and members
            noise = None if seed is None else density_noise(positions.numel(), seed, states.device)
            centres, merged = cluster_merge(states, total, k=min(NEIGHBOURS, total), noise=noise)
            positions, states = positions[centres], merged
        return Selection(positions, states.to(view.hidden.dtype))


def holitom(
    budget: int,
    num_layers: int,
    layer: int,
    num_patches: int,
    image_token_id: int,
    *,
    vision: ReceivedAttention | None = None,
    outer: str = REFERENCE,
    positions: str = RENUMBER,
    ties: str = NOISE,
    max_window: int = MAX_WINDOW,
    seed: int = 0,
) -> LLMPruner:
    """HoliTom at a layer-mean budget: F K0 tokens from layer 0 (outer merge), F K1 from `layer` (inner merge).
    vision: the feature layer's received attention, for the reference's outer stage."""
    check_budget(budget, num_patches)
    if outer == REFERENCE and vision is None:
        raise UsageError("holitom's outer stage reads the vision attention: pass its ReceivedAttention hook")
    if max_window < 2:
        raise UsageError(f"holitom max_window must be >= 2 frames, got {max_window}")
    first = first_stage_tokens(budget, num_layers, layer, num_patches, 1 - INNER_RATIO)
    (second,) = mean_schedule(budget, num_layers, first, (layer,), "holitom")
    renumber = positions == RENUMBER
    # the outer stage hands the LLM a compact prompt; the inner stage keeps its positions (`keep_indexs`)
    stages = (Stage(0, first, renumber),) + ((Stage(layer, second),) if second < first else ())  # full: no inner
    selector = HoliTomSelector(
        vision,
        outer,
        max_window=max_window,
        ties=ties,
        seed=seed,
        ordered=renumber,
        needs_attention=len(stages) > 1,
    )
    return LLMPruner(stages, selector, num_patches, image_token_id)


__all__ = [
    "INNER_RATIO",
    "LAYER",
    "HoliTomSelector",
    "ReceivedAttention",
    "best_windows",
    "holitom",
    "inner_merge",
    "outer_merge",
    "outer_plan",
    "static_windows",
    "temporal_merge",
    "window_table",
]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_layers = model.config.text_config.num_hidden_layers
    layer = llm_layer(options, LAYER, num_layers)
    hooks = ()
    if (options.get("outer") or REFERENCE) == REFERENCE:
        tower = model.model.vision_tower
        hooks = (ReceivedAttention(tower.layers_to_run(model.config.vision_feature_layer) - 1),)
    chosen = given(options, "outer", "positions", "ties", "max_window")
    pruner = holitom(
        budget,
        num_layers,
        layer,
        model.config.num_patches,
        model.config.image_token_id,
        vision=hooks[0] if hooks else None,
        seed=seed,
        **chosen,
    )
    return Parts(pruner=pruner, tower_hooks=hooks)


SPEC = MethodSpec(
    "holitom",
    "holistic token merging of a video: temporal windows and clusters, then an inner merge (Shao et al., NeurIPS 2025)",
    acts=(LLM_INPUT, INSIDE_LLM),
    where=f"LLM input (layer 0), across a sample's frames, then LLM layer {LAYER} (18 of 28, scaled)",
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(
        Option("layer", int, None, "the inner stage's layer; default the paper's, scaled"),
        Option(
            "outer",
            str,
            REFERENCE,
            "the outer stage: dynamic tokens by vision attention per frame, static ones clustered per window (the "
            "reference), or temporal merging then one clustering of every token (ours, earlier)",
            (REFERENCE, CLUSTER),
        ),
        Option(
            "positions",
            str,
            RENUMBER,
            "a compact prompt after the outer stage, numbered 0..T'-1 (the reference), or every token's own position",
            (RENUMBER, ORIGINAL),
        ),
        TIES,
        Option("max_window", int, MAX_WINDOW, "the longest temporal window, in frames (MAX_WINDOW_SIZE)"),
    ),
    paper_layers=(LAYER,),
    stage_keep=1 - INNER_RATIO,
    paper="HOLITOM_k = 18 of 28 layers, HOLITOM_r = 0.5, T = 0.80 (the authors' scripts/eval_ov-7b_holitom.sh); "
    "BETA 0.6, K 7, MAX_WINDOW_SIZE 1024 (holitom/llava_arch.py's defaults)",
    not_on_families="merges a video's equal-sized frames; the adapter feeds these families images of their own sizes",
    reference="cokeshao/HoliTom @ e9b2972",
)
