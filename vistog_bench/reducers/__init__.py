"""Training-free visual-token reducers at equal budgets, behind one interface (see base.py and docs/reducers.md).

    from vistog_bench.reducers import apply_method, tokens_per_image
    apply_method(model, "tome", 64)          # model: VisToGForConditionalGeneration with VisToG off
    prompt = expand_image_tokens(prompt, tokens_per_image(model))

Each method is one file declaring its `MethodSpec` (spec.py), found by name through `registry.py`
(`vistog-bench methods` lists them; docs/reducers.md).
"""

from .fastv import fastv
from .llm_pruning import LLMPruner, Stage
from .methods import (
    METHODS,
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
from .registry import MethodChoice, method_label, methods_table, parse_method, spec, split_methods
from .spec import MethodSpec, Option
from .tome import ToMeMerge, ToMeReducer, merge_schedule
from .visionzip import VisionZipReducer, visionzip_split
from .vispruner import VisPrunerReducer
from .vscan import VScanReducer

__all__ = [
    "METHODS",
    "REDUCERS",
    "AppliedMethod",
    "LLMPruner",
    "MethodChoice",
    "MethodSpec",
    "Option",
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
    "method_label",
    "methods_table",
    "parse_method",
    "pool_layout",
    "remove_method",
    "spec",
    "split_methods",
    "tokens_per_image",
    "visionzip_split",
]
