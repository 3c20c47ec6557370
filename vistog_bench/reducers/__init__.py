"""Training-free visual-token reducers at equal budgets, behind one interface (see base.py and docs/reducers.md).

    from vistog_bench.reducers import apply_method, tokens_per_image
    apply_method(model, "tome", 64)          # model: VisToGForConditionalGeneration with VisToG off
    prompt = expand_image_tokens(prompt, tokens_per_image(model))

Methods: none, vistog (a trained checkpoint), pool, random, tome, visionzip, prumerge, fastv, divprune, vispruner,
cdpruner, dart, pdrop, sparsevlm, vscan, downsample, holitom (docs/reducers.md).
"""

from .fastv import fastv
from .llm_pruning import LLMPruner, Stage
from .methods import (
    METHODS,
    OPTIONS,
    REDUCERS,
    AppliedMethod,
    applied_method,
    apply_method,
    check_method,
    config_problem,
    remove_method,
    tokens_per_image,
)
from .pool import PoolReducer, pool_layout
from .prumerge import PruMergeReducer
from .random_choice import RandomReducer
from .tome import ToMeMerge, ToMeReducer, merge_schedule
from .visionzip import VisionZipReducer, visionzip_split
from .vispruner import VisPrunerReducer
from .vscan import VScanReducer

__all__ = [
    "METHODS",
    "OPTIONS",
    "REDUCERS",
    "AppliedMethod",
    "LLMPruner",
    "PoolReducer",
    "PruMergeReducer",
    "RandomReducer",
    "Stage",
    "ToMeMerge",
    "ToMeReducer",
    "VScanReducer",
    "VisPrunerReducer",
    "VisionZipReducer",
    "applied_method",
    "apply_method",
    "check_method",
    "config_problem",
    "fastv",
    "merge_schedule",
    "pool_layout",
    "remove_method",
    "tokens_per_image",
    "visionzip_split",
]
