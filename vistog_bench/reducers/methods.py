"""One entry point for the runner and the adapter: configure a model for a method at a budget.

    apply_method(model, "visionzip", 64)         # model: VisToGForConditionalGeneration, VisToG off
    tokens_per_image(model)                      # what the prompt expands each <image> to (576 for fastv)
    applied_method(model)                        # AppliedMethod(method, budget, seed, options, fastv_layer)

`apply_method` replaces whatever a previous call installed, so one loaded model can serve a whole sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import UsageError
from ..model.families import find_family
from ..model.geometry import num_patches as patch_count
from .base import check_budget
from .registry import check_method, method_label, method_names, resolve, spec
from .schedule import first_stage_tokens, layer_mean, minimum_mean, stage_layers
from .spec import AFTER_LAYER, BUDGET_LLM_INPUT, LAYER_MEAN, LLAVA, Parts

METHODS = method_names()  # every registered method (registry.py), in table order


@dataclass(frozen=True)
class AppliedMethod:
    """What `apply_method` configured on a model (read by the profiler for its analytic costs and by the runner).

    Per-layer facts, for analytic FLOPs: decoder layer l works on `layer_tokens[l]` visual tokens per image (prefill
    queries and cached keys alike), where the prompt holds `tokens_per_image` per image and the projector projects
    `tokens_per_image`.
    """

    method: str
    budget: int  # what --budgets asked for, counted as `budget_convention` says
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)  # those given (spec defaults for the others)
    tokens_per_image: int = 0  # placeholders per image in the prompt (and tokens through the projector)
    fastv_layer: int | None = None  # FastV's K: layers 0..K-1 run at `tokens_per_image`; None for other methods
    budget_convention: str = BUDGET_LLM_INPUT  # llm_input | after_layer | layer_mean
    llm_input_tokens: int = 0  # visual tokens per image entering decoder layer 0
    layer_tokens: tuple[int, ...] = ()  # visual tokens per image in each decoder layer (len = L)
    mean_layer_tokens: float = 0.0  # mean of `layer_tokens` (equals budget under layer_mean, up to rounding)
    llm_attention: tuple[str, ...] = ()  # the attention implementation of each decoder layer (none is changed)
    vision_attention: str = "sdpa"  # the vision tower's kernel (VisToGVisionTower calls SDPA)
    scored_llm_layers: tuple[int, ...] = ()  # layers whose q / k also feed a float32 score product (no eager)
    vision_scores: str = ""  # extra attention the method computes in the tower, "" if none
    training_free: bool = False  # a reduction installed on a stock model (not none, not a VisToG checkpoint)

    @property
    def label(self) -> str:
        """The method with the options given, as the CLI takes it and reports name it: `tome[order=spatial]`."""
        return method_label(self.method, self.options)

    @property
    def settings(self) -> dict[str, Any]:
        """Every option of the method as it ran (given, else its spec's default; None: derived from the model)."""
        return spec(self.method).settings(self.options)


@dataclass
class _Installed:
    """What one `apply_method` call configured, and how to undo it. Kept on the model itself (`_STATE`), never in a
    module-level registry: a registry whose entries reach their model keeps every model of a sweep alive."""

    applied: AppliedMethod
    undo: list[Callable[[Any], None]]  # each takes the model: nothing here holds a reference to it


_STATE = "_vistog_applied_method"  # private attribute of the model (a plain object: not a submodule, not in state_dict)


def apply_method(model, method: str, budget: int, *, seed: int = 0, **options) -> None:
    """Configure `model` (a VisToGForConditionalGeneration) in place for `method` at `budget` tokens per image.

    `method` is a name, or a name with options (`"tome[order=spatial]"`, the CLI's and the reports' form); options
    may also come as keywords. none: stock LLaVA, budget must be the patch count. vistog: a VisToG checkpoint whose N
    equals budget. The others run on a VisToG-off model. Raises UsageError for unknown methods or options and budgets
    out of range.
    """
    method, options = resolve(method, options)
    check_budget(budget, model.config.num_patches)
    _check_checkpoint(model, method.name, method.trained)
    parts = _build(model, method.name, budget, seed, options)  # validates before anything changes
    remove_method(model)
    undo: list[Callable[[Any], None]] = []
    if parts.merge is not None:
        model.model.vision_tower.token_merge = parts.merge
        undo.append(lambda m: setattr(m.model.vision_tower, "token_merge", None))
    if parts.reducer is not None:
        model.set_token_reducer(parts.reducer)
        undo.append(lambda m: m.set_token_reducer(None))
    if parts.pruner is not None:
        parts.pruner.install(model)
        undo.append(lambda m, pruner=parts.pruner: pruner.remove())
    for hook in parts.tower_hooks:
        hook.install(model.model.vision_tower)
        undo.append(lambda m, hook=hook: hook.remove())
    applied = _describe(model, method.name, budget, seed, options, parts)
    object.__setattr__(model, _STATE, _Installed(applied, undo))
    assert model.num_visual_tokens == applied.tokens_per_image, (model.num_visual_tokens, applied.tokens_per_image)


def _check_checkpoint(model, method: str, trained: bool) -> None:
    """A trained method needs its checkpoint (vistog: a VisToG one); every other method a stock one."""
    is_vistog = model.model.grouping is not None
    if trained and not is_vistog:
        raise UsageError(f"method {method} needs a VisToG checkpoint (num_semantic_tokens set); this model is stock")
    if not trained and is_vistog:
        raise UsageError(
            f"method {method} runs on stock LLaVA; this is a VisToG checkpoint (N={model.config.num_semantic_tokens})"
        )


def _describe(model, method: str, budget: int, seed: int, options: dict, parts: Parts) -> AppliedMethod:
    """The AppliedMethod record of what `parts` do on `model`."""
    method = spec(method)
    num_layers = model.config.text_config.num_hidden_layers
    per_image = model.num_visual_tokens if parts.pruner is None else parts.pruner.tokens_per_image
    if parts.reducer is not None:
        per_image = parts.reducer.budget
    layers = parts.pruner.layer_tokens(num_layers) if parts.pruner is not None else (per_image,) * num_layers
    needs_cls = parts.reducer is not None and parts.reducer.needs_cls_attention
    return AppliedMethod(
        method.name,
        budget,
        seed,
        MappingProxyType(dict(options)),
        per_image,
        fastv_layer=parts.pruner.stages[0].layer if method.budget_convention == AFTER_LAYER else None,
        budget_convention=method.budget_convention,
        llm_input_tokens=layers[0],
        layer_tokens=layers,
        mean_layer_tokens=layer_mean(layers),
        llm_attention=(model.config.text_config._attn_implementation or "eager",) * num_layers,
        scored_llm_layers=parts.pruner.scored_layers if parts.pruner is not None else (),
        vision_scores=" and ".join(
            (["CLS attention at the feature layer (float32, from its q / k)"] if needs_cls else [])
            + [hook.scores for hook in parts.tower_hooks]
        ),
        training_free=method.training_free,
    )


def _build(model, method: str, budget: int, seed: int, options: dict) -> Parts:
    """The parts of `method` at `budget` on `model`; raises UsageError for what cannot run."""
    problem = config_problem(model.config, method, budget=budget, **options)
    if problem:
        raise UsageError(f"{method}: {problem}")
    return spec(method).build(model, budget, seed, options)


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


def config_problem(config, method: str, *, budget: int | None = None, **options) -> str | None:
    """Why `method` (a name, or `name[option=value]`) cannot run on a checkpoint with this config (a LlavaConfig /
    VisToGConfig, no weights), or None; a UsageError for an unknown method or a wrong option.

    Its spec's rules that the config alone decides (`MethodSpec.config_problem`: FastV's layer, PruMerge's layer after
    the feature layer) and, for a layer-mean method, its layers and, given `budget`, whether the budget is reachable,
    so a sweep can refuse an impossible combination before it loads anything."""
    method, options = resolve(method, options)
    family = find_family(getattr(config, "model_type", None))
    if family is not None and family.model_type != LLAVA:  # the methods that apply there (one line otherwise)
        from .families import refusal

        return refusal(family, method.name, options)
    if method.config_problem is not None:
        problem = method.config_problem(config, budget, options)
        if problem:
            return problem
    return _layer_mean_problem(config, method, budget, options) if method.budget_convention == LAYER_MEAN else None


def _layer_mean_problem(config, method, budget: int | None, options: dict) -> str | None:
    """The layers of a layer-mean method on this LLM, and whether `budget` is a reachable layer mean there."""
    name, num_layers = method.name, config.text_config.num_hidden_layers
    if num_layers < 2:
        return f"{name} prunes between decoder layers; this LLM has {num_layers}"
    try:
        layers = stage_layers(options, method.paper_layers, num_layers)
    except UsageError as error:
        return str(error)
    if options.get("layer") is not None:
        layers = (options["layer"],)
        if not 1 <= layers[0] < num_layers:
            return f"{name} layer must be in 1..{num_layers - 1} for a {num_layers}-layer LLM, got {layers[0]}"
    if budget is None:
        return None
    num_patches = patch_count(config.vision_config)
    first = (
        first_stage_tokens(budget, num_layers, layers[0], num_patches, method.stage_keep)
        if method.stage_keep is not None
        else num_patches
    )
    lowest = minimum_mean(num_layers, first, layers[0])
    if budget < lowest:
        return (
            f"{name} keeps {first} visual tokens per image in layers 0..{layers[0] - 1} of {num_layers}: "
            f"its layer-mean budget must be at least {math.ceil(lowest)}, got {budget}"
            + (" (an earlier first layer: option layers=...)" if method.option("layers") else "")
        )
    return None


__all__ = [
    "METHODS",
    "AppliedMethod",
    "applied_method",
    "apply_method",
    "check_method",
    "config_problem",
    "remove_method",
    "tokens_per_image",
]
