"""`pdrop`: PyramidDrop, staged drops of visual tokens at several LLM layers.

Xing, Huang, et al. "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction." CVPR 2025 (arXiv 2410.17247). Reference: Cooperx521/PyramidDrop @ 6444f30,
`llava/model/modeling_llama_pdrop.py` (`LlamaModel.pdrop_forward`, `pdrop_rank_drop`; `layer_list`,
`image_token_ratio_list` from its eval scripts).

As the reference: the LLM is cut into stages at layers 8, 16, 24 (of 32); at the input of each stage layer l, the
visual tokens of each image are ranked by the attention the last instruction token pays them in layer l itself (its
`input_layernorm`, `q_proj` / `k_proj` applied to the stage's input, RoPE, softmax, mean over heads) and the top
count stays, in order; the pruned prompt is renumbered 0..T'-1 (`position_ids = arange(cur_len)`), and in decoding
the generated tokens' positions drop by the tokens dropped (`cur_position_ids - (cur_visual_length -
next_visual_length)`). The count shrinks geometrically (lambda, lambda^2, lambda^3; the paper's lambda = 0.5).
`tests/test_reducers_conformance_llm.py` checks the kept set of every stage and the logits against the reference's
on the same inputs.

Budget: the layer mean, as the paper's "equivalent tokens"; lambda is solved so that the mean is the budget
(schedule.py), so 0.5 is not kept at other budgets (the reference takes the ratios as a script argument). Layers
scale with depth (l / 32 of the LLM, at least 1, duplicates merged): a 2-layer LLM has one stage.

Options (ours, `SPEC.options`): `scores="previous"` ranks with layer l-1's q / k as FastV's hook captures them (no
extra projection); `positions="original"` keeps each token's RoPE position instead of renumbering.
"""

from __future__ import annotations

from .fastv import LastTokenAttention
from .llm_pruning import (
    ORIGINAL,
    PREVIOUS_LAYER,
    RENUMBER,
    STAGE_LAYER,
    STAGE_LAYERS,
    LLMPruner,
    Stage,
    staged_geometry,
    staged_where,
)
from .schedule import mean_schedule
from .spec import INSIDE_LLM, LAYER_MEAN, MethodSpec, Option, Parts, given

LAYERS = (8, 16, 24)  # the paper's stage boundaries for LLaVA-1.5-7B (32 layers)


# the options PyramidDrop's drop has, shared with VScan's LLM stage (its `layer_prune` is PyramidDrop's code)
POSITIONS = Option(
    "positions",
    str,
    RENUMBER,
    "after each drop: number the pruned prompt 0..T'-1 as the reference, or keep each token's RoPE position",
    (RENUMBER, ORIGINAL),
)
SCORES = Option(
    "scores",
    str,
    STAGE_LAYER,
    "rank with the stage layer's own q / k (the reference) or layer l - 1's, captured as FastV does (no extra k)",
    (STAGE_LAYER, PREVIOUS_LAYER),
)


def pdrop(
    budget: int,
    num_layers: int,
    layers: tuple[int, ...],
    num_patches: int,
    image_token_id: int,
    *,
    positions: str = RENUMBER,
    scores: str = STAGE_LAYER,
) -> LLMPruner:
    """Stages at `layers` (the paper's LAYERS scaled to the LLM's depth, or the `layers` option) whose layer mean
    over the LLM is the budget."""
    counts = mean_schedule(budget, num_layers, num_patches, layers, "pdrop")
    renumber = positions == RENUMBER
    stages = tuple(Stage(layer, count, renumber) for layer, count in zip(layers, counts, strict=True))
    return LLMPruner(stages, LastTokenAttention(), num_patches, image_token_id, scores=scores)


__all__ = ["LAYERS", "POSITIONS", "SCORES", "pdrop"]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    geometry = staged_geometry(model, options, LAYERS)
    pruner = pdrop(budget, *geometry, **given(options, "positions", "scores"))
    return Parts(pruner=pruner)


SPEC = MethodSpec(
    "pdrop",
    "PyramidDrop: staged drops by the last instruction token's attention (Xing et al., CVPR 2025)",
    acts=(INSIDE_LLM,),
    where=staged_where(LAYERS),
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(
        STAGE_LAYERS,
        POSITIONS,
        SCORES,
    ),
    paper_layers=LAYERS,
    paper="layers 8 / 16 / 24 of 32, ratios 0.5 / 0.25 / 0.125 (scripts/v1_5/pdrop_eval: --layer_list, "
    "--image_token_ratio_list)",
    reference="Cooperx521/PyramidDrop @ 6444f30",
)
