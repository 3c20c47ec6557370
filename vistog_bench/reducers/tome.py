"""`tome`: Token Merging inside the vision encoder.

Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman. "Token Merging: Your ViT But Faster." ICLR 2023 (arXiv 2210.09461).
Reference implementation: facebookresearch/ToMe at af95e4b1befa172dadccd8c81e223b10090f9579, `tome/merge.py`
(`bipartite_soft_matching` with `class_token=True`, `merge_wavg`) and `tome/patch/timm.py` (`ToMeBlock`: where a
block merges; `ToMeAttention`: proportional attention, the keys' mean over heads as the metric).

Glossary: B images, S tokens in the encoder (CLS + patches), r tokens merged in one layer, L encoder layers run
(LLaVA's feature layer -2 of ViT-L's 24: L = 23), P patches, K the budget, dh head width.

As the reference: in every layer, after attention and before the MLP, the tokens are split alternately into sets
A (even positions) and B (odd); each A token's most similar B token (cosine of the layer's attention keys, mean over
heads) gives an edge; the r strongest edges merge their A token into its B token by size-weighted averaging; CLS is
protected; the merged sequence is [unmerged A tokens in order (CLS first), every B token in order], so the A / B
split of the next layer runs over that order; attention adds log(size) to the logits (proportional attention, in
vistog_bench.model.vision.encoder_layer_forward). The feature layer's K patch tokens go to LLaVA's projector in that
order. tests/test_reducers_conformance.py checks this against the reference's functions (tests/data/conformance/tome).

Departures from the reference:
  1. Schedule: the reference's default is a constant r; here r_l = floor((P - K) / L), plus one in the first
     (P - K) mod L layers, so that exactly P - K tokens merge and the feature layer returns K patch tokens.
  2. The reference caps r at half the tokens. When a layer must merge more (small budgets, or a shallow encoder such
     as the tests' tiny one), matching is repeated in that layer on the merged tokens, their keys merged by the same
     size-weighted average, until r tokens have gone.
  3. Matching in float32 (the reference matches in the model's dtype, where near-1 cosines tie in float16 /
     bfloat16 and other tokens merge); option `matching="model"` restores it. Identical on float32 models.
  4. The merged features at the feature layer go to LLaVA's projector as they are (the reference classifies from
     CLS); sizes are not passed on.
Option `order="spatial"` (ours): survivors keep their sequence order after every merge (spatial order for the LLM's
positions), which changes the A / B split of every later layer and so most merges (docs/reducers.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..model.vision import VisionStates
from .base import check_budget, check_output
from .spec import ENCODER, MethodSpec, Option, Parts, given


def merge_schedule(num_patches: int, budget: int, num_layers: int) -> tuple[int, ...]:
    """Tokens to merge in each of the L layers run, summing to P - K, constant up to one."""
    check_budget(budget, num_patches)
    total = num_patches - budget
    base, extra = divmod(total, num_layers)
    return tuple(base + (1 if layer < extra else 0) for layer in range(num_layers))


def bipartite_matching_round(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of bipartite soft matching with CLS (position 0) protected.

    metric [B, S, dh] (any scale). Returns src [B, r], the positions merged away, and dst [B, r], the positions they
    merge into, both in the sequence's coordinates. r must be <= (S - 1) // 2.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    set_a, set_b = metric[:, ::2], metric[:, 1::2]  # A: even positions (CLS first), B: odd
    scores = set_a @ set_b.transpose(-1, -2)  # [B, |A|, |B|] <- [B, |A|, dh] @ [B, dh, |B|]
    scores[:, 0] = -torch.inf  # CLS never merges
    best_score, best_b = scores.max(dim=-1)  # [B, |A|]
    src_a = best_score.argsort(dim=-1, descending=True)[:, :r]  # [B, r], the r strongest edges
    dst_b = best_b.gather(1, src_a)
    return 2 * src_a, 2 * dst_b + 1


ORDERS = ("reference", "spatial")  # the survivors' order after a merge: [unmerged A, B] as ToMe, or sequence order
MATCHINGS = ("float32", "model")  # the dtype bipartite matching computes in


def merge_weighted_average(
    tokens: torch.Tensor, sizes: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, order: str = "reference"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens `src` into `dst` by size-weighted average (`merge_wavg`); survivors in `order` (ORDERS).

    tokens [B, S, C], sizes [B, S], src / dst [B, r]. Returns tokens [B, S - r, C] and sizes [B, S - r].
    """
    length, width = tokens.shape[1:]
    weighted = tokens * sizes.unsqueeze(-1)  # [B, S, C]
    moved = weighted.gather(1, src.unsqueeze(-1).expand(-1, -1, width))  # [B, r, C]
    weighted = weighted.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, width), moved)
    sizes = sizes.scatter_add(1, dst, sizes.gather(1, src))
    survivors = surviving_positions(length, src, order)  # [B, S - r]
    sizes = sizes.gather(1, survivors)
    tokens = weighted.gather(1, survivors.unsqueeze(-1).expand(-1, -1, width)) / sizes.unsqueeze(-1)
    return tokens, sizes


def surviving_positions(length: int, src: torch.Tensor, order: str = "reference") -> torch.Tensor:
    """Positions 0..S-1 without `src` [B, r]: [B, S - r] (a sort, so no host sync). "reference": the unmerged A
    (even) positions in order, then every B (odd) position in order, as ToMe's `merge` concatenates them;
    "spatial": increasing positions."""
    batch, r = src.shape
    positions = torch.arange(length, device=src.device).expand(batch, -1)
    key = positions + length * (positions % 2) if order == "reference" else positions  # B after A, or none
    merged_away = torch.zeros(batch, length, dtype=torch.bool, device=src.device).scatter(1, src, True)
    return positions.gather(1, torch.where(merged_away, key + 2 * length, key).argsort(dim=1)[:, : length - r])


@dataclass(frozen=True)
class ToMeMerge:
    """The per-layer merge the vision tower calls (vistog_bench.model.vision.TokenMerge)."""

    schedule: tuple[int, ...]  # r per layer
    order: str = "reference"  # ORDERS
    matching: str = "float32"  # MATCHINGS

    def __post_init__(self):
        if self.order not in ORDERS:
            raise UsageError(f"tome order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.matching not in MATCHINGS:
            raise UsageError(f"tome matching must be one of {', '.join(MATCHINGS)}, got {self.matching!r}")

    def __call__(
        self, layer_index: int, hidden_states: torch.Tensor, key: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        to_merge = self.schedule[layer_index]
        metric = key.mean(dim=1)  # [B, S, dh] <- [B, h, S, dh], the reference's metric
        if self.matching == "float32":
            metric = metric.float()
        while to_merge > 0:
            r = min(to_merge, (hidden_states.shape[1] - 1) // 2)
            src, dst = bipartite_matching_round(metric, r)
            if to_merge > r:  # another round follows: it matches on merged keys
                metric, _ = merge_weighted_average(metric, sizes.to(metric.dtype), src, dst, self.order)
            hidden_states, sizes = merge_weighted_average(hidden_states, sizes, src, dst, self.order)
            to_merge -= r
        return hidden_states, sizes


@dataclass(frozen=True)
class ToMeReducer:
    """The vision-side reducer of `tome`: the merging happened in the tower; this checks and passes the K tokens."""

    budget: int
    needs_cls_attention: bool = False

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, K, Dv], merged in the tower
        return check_output(patches, patches.shape[0], self.budget, "tome (is the tower's token_merge set?)")


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    runs = model.model.vision_tower.layers_to_run(model.config.vision_feature_layer)  # encoder layers run
    schedule = merge_schedule(model.config.num_patches, budget, runs)
    return Parts(ToMeReducer(budget), ToMeMerge(schedule, **given(options, "order", "matching")))


SPEC = MethodSpec(
    "tome",
    "Token Merging in every encoder layer (Bolya et al., ICLR 2023, arXiv 2210.09461)",
    acts=(ENCODER,),
    where="inside the vision encoder, every layer",
    build=_build,
    options=(
        Option(
            "order", str, "reference", "survivors after a merge: [unmerged A, B] as ToMe, or sequence order", ORDERS
        ),
        Option("matching", str, "float32", "the dtype bipartite matching computes in", MATCHINGS),
    ),
    not_on_families="merges inside LLaVA-1.5's CLIP encoder; not wired into this family's encoder",
    reference="facebookresearch/ToMe @ af95e4b",
)

__all__ = [
    "MATCHINGS",
    "ORDERS",
    "SPEC",
    "ToMeMerge",
    "ToMeReducer",
    "bipartite_matching_round",
    "merge_schedule",
    "merge_weighted_average",
]
