"""Training-free visual-token reducers at equal budgets, behind one interface (see base.py and docs/reducers.md).

    from vistog_bench.reducers import apply_method, tokens_per_image
    apply_method(model, "tome", 64)          # model: VisToGForConditionalGeneration with VisToG off
    prompt = expand_image_tokens(prompt, tokens_per_image(model))

Each method is one file declaring its `MethodSpec` (spec.py), found by name through `registry.py`
(`vistog-bench methods` lists them; docs/reducers.md). The names below load on first use (PEP 562), so that the CLI
can list the registry's methods without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {  # name -> the module of this package that defines it
    **dict.fromkeys(
        (
            "METHODS",
            "AppliedMethod",
            "applied_method",
            "apply_method",
            "check_method",
            "config_problem",
            "remove_method",
            "tokens_per_image",
        ),
        "methods",
    ),
    **dict.fromkeys(
        ("MethodChoice", "method_label", "methods_markdown", "methods_table", "parse_method", "spec", "split_methods"),
        "registry",
    ),
    **dict.fromkeys(("MethodSpec", "Option"), "spec"),
    **dict.fromkeys(("LLMPruner", "Stage"), "llm_pruning"),
    **dict.fromkeys(("PoolReducer", "pool_layout"), "pool"),
    "PruMergeReducer": "prumerge",
    "RandomReducer": "random_choice",
    **dict.fromkeys(("ToMeMerge", "ToMeReducer", "merge_schedule"), "tome"),
    **dict.fromkeys(("VisionZipReducer", "visionzip_split"), "visionzip"),
    "VisPrunerReducer": "vispruner",
    "VScanReducer": "vscan",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = sorted(_EXPORTS)
