"""`pdrop`: PyramidDrop, staged drops of visual tokens at several LLM layers.

Xing, Huang, et al. "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction." CVPR 2025 (arXiv 2410.17247). Reference: Cooperx521/PyramidDrop, as ported in ModelTC/llmc
(`token_reduction/pyramiddrop.py`: `layer_list`, `image_token_ratio_list`).

As the reference: the LLM is cut into stages at layers 8, 16, 24 (of 32); at each stage boundary the visual tokens
of each image are ranked by the attention the last instruction token pays them (softmax, mean over heads) and the
top fraction stays, in order; the fraction shrinks geometrically (lambda, lambda^2, lambda^3; the paper's default
lambda = 0.5). Budget: the layer mean, as the paper's "equivalent tokens"; lambda is solved so that the mean is the
budget (schedule.py), so 0.5 is not kept at other budgets.

Departures:
  1. The ranking at a stage layer l comes from layer l-1's q / k (FastV's hook, no recomputation); the reference
     recomputes layer l's own q / k on its input.
  2. Layers scale with depth (l / 32 of the LLM, at least 1, duplicates merged): a 2-layer LLM has one stage.
"""

from __future__ import annotations

from .fastv import LastTokenAttention
from .llm_pruning import LLMPruner, Stage
from .schedule import mean_schedule, stage_layers
from .spec import INSIDE_LLM, LAYER_MEAN, MethodSpec, Option, Parts

LAYERS = (8, 16, 24)  # the paper's stage boundaries for LLaVA-1.5-7B (32 layers)


def pdrop(budget: int, num_layers: int, layers: tuple[int, ...], num_patches: int, image_token_id: int) -> LLMPruner:
    """Stages at `layers` (the paper's LAYERS scaled to the LLM's depth, or the `layers` option) whose layer mean
    over the LLM is the budget."""
    counts = mean_schedule(budget, num_layers, num_patches, layers, "pdrop")
    stages = tuple(Stage(layer, count) for layer, count in zip(layers, counts, strict=True))
    return LLMPruner(stages, LastTokenAttention(), num_patches, image_token_id)


__all__ = ["LAYERS", "pdrop"]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_layers = model.config.text_config.num_hidden_layers
    layers = stage_layers(options, LAYERS, num_layers)
    return Parts(pruner=pdrop(budget, num_layers, layers, model.config.num_patches, model.config.image_token_id))


SPEC = MethodSpec(
    "pdrop",
    "PyramidDrop: staged drops by the last instruction token's attention (Xing et al., CVPR 2025)",
    acts=(INSIDE_LLM,),
    where=f"inside the LLM at layers {' / '.join(map(str, LAYERS))} (scaled)",
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(Option("layers", str, None, "comma-separated decoder layers, e.g. 2,6,12; default the paper's, scaled"),),
    paper_layers=LAYERS,
    paper="layers 8 / 16 / 24 of 32, lambda = 0.5 (arXiv 2410.17247; llmc's layer_list, image_token_ratio_list)",
    reference="Cooperx521/PyramidDrop @ 6444f30",
)
