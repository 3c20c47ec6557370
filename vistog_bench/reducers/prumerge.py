"""`prumerge`: LLaVA-PruMerge at a fixed budget.

Shang, Cai, Xu, Lee, Yan. "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models."
arXiv 2403.15388. Reference implementation: 42Shawn/LLaVA-PruMerge at 097c04116a58465e4bcb58cec44a94018a68ff1a,
`llava/model/multimodal_encoder/clip_encoder.py` (`token_prune_merge_advanced`, `outlier_dectection`).

Glossary: B images, P patches, I = 1 + P (CLS first), K budget, Dv vision width, k neighbours merged (32).

As the reference (PruMerge):
  1. attention of CLS over the I tokens from the q / k projections of the encoder layer *after* LLaVA's feature
     layer applied to the feature-layer states (the reference hooks `layers[23].self_attn.{q,k}_proj`), as one head
     of width Dv: softmax(q_cls k^T / sqrt(Dv)), CLS column dropped -> a [B, P];
  2. the kept tokens: the top of that attention (in the reference, its IQR outliers, see departure 1), in
     descending-attention order;
  3. each kept token i becomes x_i + sum_j a_j x_j over its k = 32 most key-similar other tokens j (cosine of the
     same layer's keys, kept and pruned alike), weighted by their un-normalised CLS attention a_j;
  4. one extra token, sum_j a_j x_j over every pruned token j, follows the kept ones (`extra_one_token`).
At budget K: K - 1 kept tokens and the extra one. tests/test_reducers_conformance.py checks this against the
reference's outputs (tests/data/conformance/prumerge).

Departures from the reference:
  1. Fixed budget. The reference keeps the IQR outliers of the attention (a > Q3 + 1.5 IQR), a number that varies by
     image (about 32 of 576 on average). Here exactly K - 1 are kept: the outliers ranked by attention, then the
     next highest-attention tokens. Outliers are by definition the top of the ranking, so the kept set is the top of
     the ranking whatever the outlier count; `iqr_outlier_count` reports what the reference would have kept.
  2. The reference computes the IQR over the whole batch at once (`flatten()`), so an image's token count depends
     on its batch; here per image.
  3. Vectorised (the reference loops over images and kept tokens); same neighbours up to ties, sums in another order.
  4. Attention and key cosines in float32 (the reference: the model's dtype).
  5. Without an encoder layer after the feature layer (feature layer = last layer) this method is refused.
Option `extra_token=0` (ours): K kept tokens and no extra one.
Not implemented: PruMerge+ (`token_prune_merge_advanced_plus`, which the reference's `forward` calls): it adds
spatially uniform tokens to the outliers, a count that has no fixed-budget rule in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from ..errors import UsageError
from ..model.vision import VisionStates, feature_layers_run
from .base import check_budget, check_output, gather_tokens
from .spec import ENCODER, MethodSpec, Option, Parts, given

NEIGHBOURS = 32  # the reference's k


def next_layer_cls_attention(layer: CLIPEncoderLayer, states: VisionStates) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's CLS attention and keys: `layer`'s q / k on the feature-layer states, one head of width Dv.

    Returns attention [B, P] (softmax over all I tokens, CLS column dropped) and patch keys [B, P, Dv].
    """
    tokens = torch.cat([states.cls_state.unsqueeze(1), states.patch_states], dim=1)  # [B, I, Dv]
    normed = layer.layer_norm1(tokens)
    query = layer.self_attn.q_proj(normed[:, :1])  # [B, 1, Dv]
    key = layer.self_attn.k_proj(normed)  # [B, I, Dv]
    width = key.shape[-1]
    # [B, 1, I] <- [B, 1, Dv] @ [B, Dv, I]
    attention = torch.softmax((query @ key.transpose(1, 2)).float() * width**-0.5, dim=-1)
    return attention[:, 0, 1:], key[:, 1:]


def iqr_outlier_count(attention: torch.Tensor) -> torch.Tensor:
    """Per image, how many tokens lie above Q3 + 1.5 IQR of its attention [B, P] (the reference's adaptive count)."""
    q1, q3 = torch.quantile(attention.float(), torch.tensor([0.25, 0.75], device=attention.device), dim=1)
    return (attention.float() > (q3 + 1.5 * (q3 - q1)).unsqueeze(1)).sum(dim=1)


def merge_neighbours(
    patches: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor, neighbours: int
) -> torch.Tensor:
    """x_i + sum_j a_j x_j over the `neighbours` most key-similar other tokens j of each kept token i.

    patches [B, P, Dv], keys [B, P, Dv], attention [B, P], kept [B, K]. Returns [B, K, Dv].
    """
    num_patches = patches.shape[1]
    normed = F.normalize(keys.float(), dim=-1)
    # [B, K, P] <- [B, K, Dv] @ [B, Dv, P]
    similarity = gather_tokens(normed, kept) @ normed.transpose(1, 2)
    similarity.scatter_(2, kept.unsqueeze(-1), -torch.inf)  # a token is not its own neighbour
    near = similarity.topk(min(neighbours, num_patches - 1), dim=2).indices  # [B, K, k]
    batch, budget, count = near.shape
    # the weighted sum over neighbours as one matmul with a sparse-by-construction weight matrix
    neighbour_attention = attention.gather(1, near.flatten(1)).view(batch, budget, count)  # [B, K, k]
    weights = patches.new_zeros(batch, budget, num_patches).scatter_(2, near, neighbour_attention.to(patches.dtype))
    # [B, K, Dv] <- [B, K, P] @ [B, P, Dv]
    return gather_tokens(patches, kept) + weights @ patches


def pruned_sum(patches: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The reference's extra token: sum_j a_j x_j over the tokens j not kept. patches [B, P, Dv], attention [B, P],
    kept [B, K']. Returns [B, 1, Dv]."""
    weights = attention.to(patches.dtype).scatter(1, kept, 0.0)  # [B, P], kept tokens weigh nothing
    return weights.unsqueeze(1) @ patches  # [B, 1, Dv] <- [B, 1, P] @ [B, P, Dv]


@dataclass(frozen=True)
class PruMergeReducer:
    budget: int
    num_patches: int
    next_layer: CLIPEncoderLayer  # the encoder layer after LLaVA's feature layer (weights shared, not copied)
    neighbours: int = NEIGHBOURS
    extra_token: int = 1  # 1: K - 1 kept + the weighted sum of the pruned (the reference); 0: K kept, no extra
    needs_cls_attention: bool = False  # computed here from `next_layer`, as the reference does

    def __post_init__(self):
        check_budget(self.budget, self.num_patches)
        if self.extra_token not in (0, 1):
            raise UsageError(f"prumerge extra_token must be 0 or 1, got {self.extra_token!r}")

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, P, Dv]
        attention, keys = next_layer_cls_attention(self.next_layer, states)
        # [B, K - extra], descending attention as the reference
        kept = attention.topk(self.budget - self.extra_token, dim=1).indices
        tokens = merge_neighbours(patches, keys, attention, kept, self.neighbours)
        if self.extra_token:
            tokens = torch.cat([tokens, pruned_sum(patches, attention, kept)], dim=1)
        return check_output(tokens, patches.shape[0], self.budget, "prumerge")


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    neighbours = options.get("neighbours", NEIGHBOURS)
    if neighbours is not None and neighbours < 1:
        raise UsageError(f"prumerge neighbours must be >= 1, got {neighbours}")
    tower = model.model.vision_tower
    next_layer = tower.encoder.layers[tower.layers_to_run(model.config.vision_feature_layer)]
    reducer = PruMergeReducer(budget, model.config.num_patches, next_layer, neighbours, **given(options, "extra_token"))
    return Parts(reducer)


def _config_problem(config, budget: int | None, options: dict) -> str | None:
    """It reads the encoder layer after the feature layer: none when the feature layer is the last."""
    vision, feature_layer = config.vision_config, config.vision_feature_layer
    if feature_layers_run(feature_layer, vision.num_hidden_layers) >= vision.num_hidden_layers:
        return (
            f"prumerge reads the encoder layer after the feature layer; the feature layer "
            f"({feature_layer}) is the last of {vision.num_hidden_layers}"
        )
    return None


_READS_NEXT_LAYER = "reads the CLS attention of the encoder layer after the feature layer"
SPEC = MethodSpec(
    "prumerge",
    "CLS-attention outliers, each merged with its key neighbours (Shang et al., arXiv 2403.15388)",
    acts=(ENCODER,),
    where="after the vision tower (uses the next encoder layer's q / k)",
    build=_build,
    options=(
        Option("neighbours", int, NEIGHBOURS, "k key-nearest tokens merged into each kept one (the reference's 32)"),
        Option("extra_token", int, 1, "1: K - 1 kept + the sum of the pruned (the reference); 0: K kept", (1, 0)),
    ),
    not_on_families={
        "llava_next": f"{_READS_NEXT_LAYER} and merges over one 24 x 24 view; not built for anyres views (visionzip "
        "and vispruner read each view's CLS attention here)",
        "llava_onevision": f"{_READS_NEXT_LAYER}; SigLIP has no CLS and the feature layer (-1) is the last",
        "qwen2_5_vl": f"{_READS_NEXT_LAYER}; the ViT has no CLS and its last block feeds the PatchMerger",
    },
    reference="42Shawn/LLaVA-PruMerge @ 097c041",
    config_problem=_config_problem,
)

__all__ = [
    "NEIGHBOURS",
    "SPEC",
    "PruMergeReducer",
    "iqr_outlier_count",
    "merge_neighbours",
    "next_layer_cls_attention",
    "pruned_sum",
]
