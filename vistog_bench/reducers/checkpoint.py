"""The two methods a checkpoint defines by itself: `none` (every patch token) and `vistog` (a trained VisToG).

`none` is the full-budget reference of every sweep; `vistog` runs a VisToG checkpoint at its own N
(`VisToGForConditionalGeneration`, model/modeling.py; on LLaVA-NeXT / OneVision the VisToG per view models of
model/modeling_views.py).
Nothing is installed on the model for either: `apply_method` only checks that the budget is the checkpoint's.
"""

from __future__ import annotations

from ..errors import UsageError
from .spec import ENCODER, EVERY_FAMILY, LLAVA, MethodSpec, Parts


def _keep_all(model, budget: int, seed: int, options: dict) -> Parts:
    num_patches = model.config.num_patches
    if budget != num_patches:
        raise UsageError(
            f"method none keeps all {num_patches} patch tokens: budget must be {num_patches}, got {budget}"
        )
    return Parts()


def _checkpoint_count(model, budget: int, seed: int, options: dict) -> Parts:
    if model.config.num_semantic_tokens != budget:
        raise UsageError(
            f"this VisToG checkpoint gives {model.config.num_semantic_tokens} tokens per image, not budget {budget}"
        )
    return Parts()


NONE = MethodSpec(
    "none",
    "every visual token: the full-budget reference",
    acts=(),
    where="nothing reduced",
    build=_keep_all,
    prompt_tokens="P (all)",
    families=EVERY_FAMILY,
    reference="the stock checkpoint",
)
VISTOG = MethodSpec(
    "vistog",
    "VisToG's trained grouping into N semantic tokens (arXiv 2411.17773)",
    acts=(ENCODER,),
    where="between the vision tower and the projector (trained)",
    build=_checkpoint_count,
    prompt_tokens="N (the checkpoint's)",
    families=(LLAVA, "llava_next", "llava_onevision"),
    not_on_families="needs a VisToG checkpoint of this family (VisToG per view: LLaVA-NeXT / OneVision only)",
    reference="this repository (model/grouping.py)",
    trained=True,
)

__all__ = ["NONE", "VISTOG"]
