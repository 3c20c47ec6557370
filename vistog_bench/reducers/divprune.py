"""`divprune`: max-min diversity selection of the visual tokens at the LLM input.

Alvar, Singh, Akbari, Zhang. "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models."
CVPR 2025 (arXiv 2503.02175). Reference: vbdi/divprune at 799e2d950aa01ba7860907f5a6d86061f885dca6,
`LLaVA/llava/model/llava_arch.py` (`DivPrune`, `pairwise_cosine_similarity`, called from
`prepare_inputs_labels_for_multimodal` on the projected visual tokens; ModelTC/llmc ports it as
`token_reduction/divprune.py`).

Glossary: V visual tokens of one image (P), K budget, D LLM width.

As the reference: distances d(i, j) = 1 - cos(x_i, x_j) between the projected visual tokens of one image, in the
model's dtype; the first token kept is the one farthest from its nearest neighbour; each next one maximises its
minimum distance to the kept set (greedy max-min diversity, the MMDP), ties to the lowest index (`argmax`); the K
kept tokens enter the LLM in spatial order, as a shorter prompt numbered 0..T'-1 (the reference hands the pruned
`new_input_embeds` to the LLM without position ids; decoding continues from T'). tests/test_reducers_conformance.py
checks the selection and the logits over the pruned prompt against the reference's (tests/data/conformance/divprune).

Where: a stage at LLM layer 0 of the shared in-LLM pruner (llm_pruning.py), because the reference selects on the
projected features: the prompt carries P placeholders per image, the projector runs on all P, and every decoder
layer sees K. Departure: one running minimum instead of the reference's minimum over the kept rows at every step (a
minimum is exact, so the same choices). Options (ours, earlier): `precision="float32"` computes the distances in
float32 (in float16 / bfloat16 the picks then differ from the reference's on some images); `positions="original"`
keeps each kept token's RoPE position (the same picks, other logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from .llm_pruning import INPUT_POSITIONS, LLMPruner, SampleView, Selection, Stage, renumbers
from .spec import EVERY_FAMILY, LLM_INPUT, MethodSpec, Option, Parts, given

PRECISIONS = ("model", "float32")  # the dtype the distances are computed in


def max_min_diversity(features: torch.Tensor, keep: int, upcast: bool = False) -> torch.Tensor:
    """Greedy max-min diversity over features [V, C]: indices [keep], in the order chosen. Distances in the
    features' dtype, as the reference (upcast=True: float32)."""
    features = features.float() if upcast else features
    normed = features / features.norm(dim=1, keepdim=True)  # the reference's normalisation (no epsilon)
    distance = 1.0 - normed @ normed.T  # [V, V]
    nearest = distance.topk(2, dim=0, largest=False).values[1]  # [V], distance to the nearest other token
    # the choices stay on the device ([1] index tensors): no host read per kept token
    chosen = torch.empty(keep, dtype=torch.long, device=features.device)
    item = nearest.argmax().view(1)
    chosen[0:1] = item
    closest = distance.index_select(0, item)[0]  # [V], each token's distance to the kept set
    for step in range(1, keep):
        item = closest.argmax().view(1)
        chosen[step : step + 1] = item
        closest = torch.minimum(closest, distance.index_select(0, item)[0])
    return chosen


@dataclass(frozen=True)
class DivPruneSelector:
    precision: str = "model"  # PRECISIONS
    needs_attention: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UsageError(f"divprune precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        upcast = self.precision == "float32"
        kept = [block[max_min_diversity(view.hidden[block], keep, upcast)] for block in view.blocks]
        return Selection(torch.cat(kept))


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    selector = DivPruneSelector(**given(options, "precision"))
    num_patches, image_token = model.config.num_patches, model.config.image_token_id
    renumber = renumbers(options)
    return Parts(pruner=LLMPruner((Stage(0, budget, renumber),), selector, num_patches, image_token))


SPEC = MethodSpec(
    "divprune",
    "greedy max-min diversity of the projected tokens (Alvar et al., CVPR 2025, arXiv 2503.02175)",
    acts=(LLM_INPUT,),
    where="LLM input (layer 0)",
    build=_build,
    prompt_tokens="P",
    options=(
        Option("precision", str, "model", "the dtype distances are computed in", PRECISIONS),
        INPUT_POSITIONS,
    ),
    families=EVERY_FAMILY,
    reference="vbdi/divprune @ 799e2d9",
)

__all__ = ["PRECISIONS", "SPEC", "DivPruneSelector", "max_min_diversity"]
