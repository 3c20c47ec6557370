"""`visionzip`: dominant tokens by [CLS] attention plus contextual tokens merged from the rest.

Yang, Chen, Tian, Wang, Hu, Jia. "VisionZip: Longer is Better but Not Necessary in Vision Language Models."
arXiv 2412.04467 (CVPR 2025). Reference implementation: dvlab-research/VisionZip at
3151f6df4fca36a4cd1c985e5956e725b1f9ad02, `visionzip/main.py` (`visionzip(model, dominant, contextual)` keeps
`dominant - 1` patches), `visionzip/clip_encoder.py` (`CLIPVisionTower_VisionZip.forward`), `visionzip/llava_arch.py`
(`encode_images_visionzip`: every returned row, CLS included, goes through the projector to the LLM).

Glossary: B images, P patches, K budget = Kd dominant + Kc contextual, R remaining, Dv vision width, dh head width.

As the reference, at LLaVA's feature layer (-2):
  1. dominant: the CLS state of the feature layer, then the Kd - 1 patches with the highest CLS -> patch attention
     (the reference sums over heads, here the mean: the sum scaled by 1 / h, exact for CLIP's power-of-two head
     counts), in spatial order;
  2. contextual: the R = P - (Kd - 1) other patches, compared by their attention keys (mean over heads,
     L2-normalised, in the model's dtype); Kc targets are taken uniformly, every floor(R / Kc)-th of them in sequence
     order; every other remaining token joins its most similar target; each contextual token is target + mean of the
     tokens that joined it;
  3. output [CLS, dominant patches (spatial order), contextual (target order)].
tests/test_reducers_conformance.py checks this against the reference's outputs (tests/data/conformance/visionzip).

Split: the reference's LLaVA-1.5 settings are 54 + 10 (64), 108 + 20 (128), 162 + 30 (192), i.e. Kc = 10/64 of K;
here Kc = round(10 K / 64) for every K, at least 1 when K >= 2 and R > 0, and 0 when K = 1 or K = P.
`contextual=` overrides Kc.

Departures from the reference:
  1. Budgets other than the paper's three use the rule above.
  2. The CLS attention comes from the tower in float32 (vistog_bench.model.vision); the reference's eager attention
     is in the model's dtype (the same on float32 models).
Option `with_cls=0` (ours, not the reference): Kd dominant patches and no CLS, the contextual merge over the
P - Kd others; it changes one dominant token and the whole merge set (docs/reducers.md, fidelity table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..model.vision import VisionStates
from .base import check_budget, check_output, gather_tokens, head_mean
from .spec import ENCODER, EVERY_FAMILY, MethodSpec, Option, Parts, given

CONTEXTUAL_FRACTION = 10 / 64  # the reference's LLaVA-1.5 settings: 10 of 64, 20 of 128, 30 of 192


def visionzip_split(budget: int, num_patches: int, contextual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) token counts for budget K."""
    check_budget(budget, num_patches)
    if contextual is None:
        contextual = 0 if budget in (1, num_patches) else max(1, round(budget * CONTEXTUAL_FRACTION))
    if isinstance(contextual, bool) or not isinstance(contextual, int) or not 0 <= contextual < budget:
        raise UsageError(f"visionzip contextual tokens must be an integer in 0..{budget - 1}, got {contextual!r}")
    return budget - contextual, contextual


def contextual_targets(num_remaining: int, count: int) -> torch.Tensor:
    """Which of R remaining tokens are the `count` targets: every floor(R / count)-th in sequence order. [R] bool,
    on the host (the split depends on sizes only)."""
    is_target = torch.zeros(num_remaining, dtype=torch.bool)
    is_target[torch.arange(0, num_remaining, max(1, num_remaining // count))[:count]] = True
    return is_target


def contextual_tokens(remaining: torch.Tensor, metric: torch.Tensor, count: int) -> torch.Tensor:
    """Merge R remaining tokens into `count` contextual ones.

    remaining [B, R, Dv], metric [B, R, dh] (their keys, head mean). Returns [B, count, Dv].
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    is_target = contextual_targets(remaining.shape[1], count)
    targets = is_target.nonzero().squeeze(1).to(remaining.device)  # [Kc]
    others = (~is_target).nonzero().squeeze(1).to(remaining.device)  # [R - Kc]
    # [B, R - Kc, Kc] <- [B, R - Kc, dh] @ [B, dh, Kc]
    # in the keys' dtype, as the reference
    similarity = metric.index_select(1, others) @ metric.index_select(1, targets).transpose(1, 2)
    assignment = remaining.new_zeros(similarity.shape).scatter_(2, similarity.argmax(dim=2, keepdim=True), 1.0)
    counts = assignment.sum(dim=1).clamp(min=1).unsqueeze(-1)  # [B, Kc, 1]
    # [B, Kc, Dv] <- [B, Kc, R - Kc] @ [B, R - Kc, Dv]
    joined_mean = assignment.transpose(1, 2) @ remaining.index_select(1, others) / counts
    return remaining.index_select(1, targets) + joined_mean


@dataclass(frozen=True)
class VisionZipReducer:
    budget: int
    num_patches: int
    num_heads: int  # of the vision encoder, for the head-mean keys
    contextual: int | None = None
    with_cls: int = 1  # 1: the CLS state is the first dominant token (the reference); 0: Kd patches, no CLS
    needs_cls_attention: bool = True

    def __post_init__(self):
        visionzip_split(self.budget, self.num_patches, self.contextual)
        if self.with_cls not in (0, 1):
            raise UsageError(f"visionzip with_cls must be 0 or 1, got {self.with_cls!r}")

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches, attention = states.patch_states, states.cls_attention  # [B, P, Dv], [B, P]
        if attention is None or states.patch_keys is None:
            raise UsageError("visionzip needs the vision tower's CLS attention and patch keys (needs_cls_attention)")
        batch, num_patches, _ = patches.shape
        num_dominant, num_contextual = visionzip_split(self.budget, num_patches, self.contextual)
        num_dominant -= self.with_cls  # dominant patches (the CLS state takes one dominant slot)
        top = attention.topk(num_dominant, dim=1).indices  # [B, Kd - with_cls]
        is_dominant = torch.zeros_like(attention, dtype=torch.bool).scatter_(1, top, True)  # [B, P]
        positions = torch.arange(num_patches, device=patches.device).expand(batch, -1)
        # dominant first, each group in spatial order (a sort instead of masked_select: no host sync)
        order = torch.where(is_dominant, positions, positions + num_patches).sort(dim=1).values  # [B, P]
        dominant = gather_tokens(patches, order[:, :num_dominant])  # [B, Kd - with_cls, Dv]
        if self.with_cls:
            dominant = torch.cat([states.cls_state.unsqueeze(1), dominant], dim=1)  # [B, Kd, Dv]
        tokens = dominant
        if num_contextual:
            rest = order[:, num_dominant:] - num_patches  # [B, R]
            metric = head_mean(states.patch_keys, self.num_heads)  # [B, P, dh]
            context = contextual_tokens(gather_tokens(patches, rest), gather_tokens(metric, rest), num_contextual)
            tokens = torch.cat([dominant, context], dim=1)
        return check_output(tokens, batch, self.budget, "visionzip")


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    heads = model.config.vision_config.num_attention_heads
    contextual = options.get("contextual")
    return Parts(
        VisionZipReducer(budget, model.config.num_patches, heads, contextual=contextual, **given(options, "with_cls"))
    )


SPEC = MethodSpec(
    "visionzip",
    "dominant tokens by CLS attention plus contextual merges (Yang et al., arXiv 2412.04467)",
    acts=(ENCODER,),
    where="after the vision tower (uses CLS attention + keys; other families: at the LLM input)",
    build=_build,
    options=(
        Option("contextual", int, None, "Kc contextual tokens; default round(10 K / 64), the paper's 10 of 64"),
        Option(
            "with_cls", int, 1, "1: the CLS state is the first dominant token (the reference); 0: patches only", (1, 0)
        ),
    ),
    paper="54 dominant + 10 contextual at 64 (108 + 20, 162 + 30): the reference's `visionzip(model, 54, 10)` calls",
    families=EVERY_FAMILY,
    family_scores=True,
    reference="dvlab-research/VisionZip @ 3151f6d",
)

__all__ = ["SPEC", "VisionZipReducer", "contextual_targets", "contextual_tokens", "visionzip_split"]
