"""One entry point for the runner and the adapter: configure a model for a method at a budget.

    apply_method(model, "visionzip", 64)         # model: VisToGForConditionalGeneration, VisToG off
    tokens_per_image(model)                      # what the prompt expands each <image> to (576 for fastv)
    applied_method(model)                        # AppliedMethod(method, budget, seed, options, fastv_layer)

`apply_method` replaces whatever a previous call installed, so one loaded model can serve a whole sweep.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import UsageError
from .base import check_budget
from .fastv import FastV
from .pool import PoolReducer
from .prumerge import NEIGHBOURS, PruMergeReducer
from .random_choice import RandomReducer
from .tome import ToMeMerge, ToMeReducer, merge_schedule
from .visionzip import VisionZipReducer

METHODS = ("none", "vistog", "pool", "random", "tome", "visionzip", "prumerge", "fastv")
REDUCERS = METHODS[2:]  # the training-free ones, which run on stock LLaVA (VisToG off)

OPTIONS: dict[str, dict[str, type]] = {  # method -> the options it accepts and their types
    "none": {},
    "vistog": {},
    "pool": {},
    "random": {},
    "tome": {},
    "visionzip": {"contextual": int},
    "prumerge": {"neighbours": int},
    "fastv": {"fastv_layer": int},
}
FASTV_LAYER = 2  # the paper's K


@dataclass(frozen=True)
class AppliedMethod:
    """What `apply_method` configured on a model (read by the profiler for its analytic costs)."""

    method: str
    budget: int  # visual tokens per image the LLM works with (from layer `fastv_layer` on, for fastv)
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    tokens_per_image: int = 0  # placeholders per image in the prompt (P for fastv, else the budget)
    fastv_layer: int | None = None  # FastV's K: layers 0..K-1 run at `tokens_per_image`; None for other methods


@dataclass
class _Installed:
    """What one `apply_method` call configured, and how to undo it. Kept on the model itself (`_STATE`), never in a
    module-level registry: a registry whose entries reach their model keeps every model of a sweep alive."""

    applied: AppliedMethod
    undo: list[Callable[[Any], None]]  # each takes the model: nothing here holds a reference to it


_STATE = "_vistog_applied_method"  # private attribute of the model (a plain object: not a submodule, not in state_dict)


def apply_method(model, method: str, budget: int, *, seed: int = 0, **options) -> None:
    """Configure `model` (a VisToGForConditionalGeneration) in place for `method` at `budget` tokens per image.

    none: stock LLaVA, budget must be the patch count. vistog: a VisToG checkpoint whose N equals budget. The others
    run on a VisToG-off model. Raises UsageError for unknown methods or options and budgets out of range.
    """
    method = check_method(method)
    options = _check_options(method, options)
    num_patches = model.config.num_patches
    check_budget(budget, num_patches)
    is_vistog = model.model.grouping is not None
    if method == "vistog":
        if not is_vistog:
            raise UsageError("method vistog needs a VisToG checkpoint (num_semantic_tokens set); this model is stock")
        if model.config.num_semantic_tokens != budget:
            raise UsageError(
                f"this VisToG checkpoint gives {model.config.num_semantic_tokens} tokens per image, not budget {budget}"
            )
    elif is_vistog:
        raise UsageError(
            f"method {method} runs on stock LLaVA; this is a VisToG checkpoint (N={model.config.num_semantic_tokens})"
        )
    if method == "none" and budget != num_patches:
        raise UsageError(
            f"method none keeps all {num_patches} patch tokens: budget must be {num_patches}, got {budget}"
        )

    reducer, merge, fastv = _build(model, method, budget, seed, options)  # validates before anything changes
    remove_method(model)
    undo: list[Callable[[Any], None]] = []
    if merge is not None:
        model.model.vision_tower.token_merge = merge
        undo.append(lambda m: setattr(m.model.vision_tower, "token_merge", None))
    if reducer is not None:
        model.set_token_reducer(reducer)
        undo.append(lambda m: m.set_token_reducer(None))
    if fastv is not None:
        fastv.install(model)
        undo.append(lambda m, fastv=fastv: fastv.remove())
    per_image = num_patches if method == "fastv" else budget
    fastv_layer = fastv.fastv_layer if fastv is not None else None
    applied = AppliedMethod(method, budget, seed, MappingProxyType(dict(options)), per_image, fastv_layer)
    object.__setattr__(model, _STATE, _Installed(applied, undo))
    assert model.num_visual_tokens == per_image, (model.num_visual_tokens, per_image)


def _build(model, method: str, budget: int, seed: int, options: dict):
    """(vision reducer, in-encoder merge, FastV) for `method`; each None where the method has none."""
    num_patches = model.config.num_patches
    vision = model.config.vision_config
    tower = model.model.vision_tower
    feature_layers = tower.layers_to_run(model.config.vision_feature_layer)  # encoder layers run
    if method == "pool":
        return PoolReducer(budget, grid=vision.image_size // vision.patch_size), None, None
    if method == "random":
        return RandomReducer(budget, num_patches, seed=seed), None, None
    if method == "tome":
        return ToMeReducer(budget), ToMeMerge(merge_schedule(num_patches, budget, feature_layers)), None
    if method == "visionzip":
        contextual = options.get("contextual")
        return VisionZipReducer(budget, num_patches, vision.num_attention_heads, contextual=contextual), None, None
    if method == "prumerge":
        if feature_layers >= len(tower.encoder.layers):
            raise UsageError("prumerge reads the encoder layer after the feature layer; the feature layer is the last")
        neighbours = options.get("neighbours", NEIGHBOURS)
        if neighbours is not None and neighbours < 1:
            raise UsageError(f"prumerge neighbours must be >= 1, got {neighbours}")
        return PruMergeReducer(budget, num_patches, tower.encoder.layers[feature_layers], neighbours), None, None
    if method == "fastv":
        fastv_layer = options.get("fastv_layer", FASTV_LAYER)
        num_layers = model.config.text_config.num_hidden_layers
        if not 1 <= fastv_layer < num_layers:
            raise UsageError(
                f"fastv_layer must be in 1..{num_layers - 1} for a {num_layers}-layer LLM, got {fastv_layer}"
            )
        return None, None, FastV(budget, fastv_layer, num_patches, model.config.image_token_id)
    return None, None, None


def remove_method(model) -> None:
    """Undo what `apply_method` installed (the model is then as loaded)."""
    installed = model.__dict__.pop(_STATE, None)
    if installed is not None:
        for undo in reversed(installed.undo):
            undo(model)


def applied_method(model) -> AppliedMethod | None:
    """What `apply_method` last configured on `model` (None if nothing)."""
    installed = model.__dict__.get(_STATE)
    return installed.applied if installed is not None else None


def tokens_per_image(model) -> int:
    """How many tokens each `<image>` of a prompt expands to: the budget, except for fastv (all P patches: FastV
    prunes inside the LLM) and for a model left as loaded (P stock, N VisToG)."""
    return model.num_visual_tokens


def check_method(method: str) -> str:
    name = str(method).strip().lower()
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown method {method!r}{hint}; known: {', '.join(METHODS)}")
    return name


def _check_options(method: str, options: dict) -> dict:
    allowed = OPTIONS[method]
    for name, value in options.items():
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise UsageError(f"method {method} has no option {name!r}; its options: {known}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, allowed[name])):
            raise UsageError(f"option {name} of {method} must be {allowed[name].__name__}, got {value!r}")
    return options


def config_problem(config, method: str, **options) -> str | None:
    """Why `method` cannot run on a checkpoint with this config (a LlavaConfig / VisToGConfig, no weights), or None.

    The rules of `_build` that the config alone decides (FastV's layer inside the LLM, PruMerge's layer after the
    feature layer), so a sweep can refuse an impossible combination before it loads anything."""
    method = check_method(method)
    if method == "prumerge":
        num_layers = config.vision_config.num_hidden_layers
        feature_layer = config.vision_feature_layer
        runs = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
        if runs >= num_layers:
            return (f"prumerge reads the encoder layer after the feature layer; the feature layer "
                    f"({feature_layer}) is the last of {num_layers}")
    if method == "fastv":
        fastv_layer = options.get("fastv_layer", FASTV_LAYER)
        num_layers = config.text_config.num_hidden_layers
        if not 1 <= fastv_layer < num_layers:
            return f"fastv_layer must be in 1..{num_layers - 1} for a {num_layers}-layer LLM, got {fastv_layer}"
    return None


__all__ = [
    "METHODS",
    "OPTIONS",
    "REDUCERS",
    "AppliedMethod",
    "applied_method",
    "config_problem",
    "apply_method",
    "remove_method",
    "tokens_per_image",
]
