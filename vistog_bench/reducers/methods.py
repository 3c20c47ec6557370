"""One entry point for the runner and the adapter: configure a model for a method at a budget.

    apply_method(model, "visionzip", 64)         # model: VisToGForConditionalGeneration, VisToG off
    tokens_per_image(model)                      # what the prompt expands each <image> to (576 for fastv)
    applied_method(model)                        # AppliedMethod(method, budget, seed, options, fastv_layer)

`apply_method` replaces whatever a previous call installed, so one loaded model can serve a whole sweep.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import UsageError
from ..model.families import family_of
from ..model.vision import feature_layers_run
from .base import check_budget
from .cdpruner import CDPrunerSelector
from .dart import LAYER as DART_LAYER
from .dart import DARTSelector
from .divprune import DivPruneSelector
from .downsample import GridDownsample
from .fastv import LastTokenAttention, fastv
from .holitom import INNER_RATIO as HOLITOM_RATIO
from .holitom import LAYER as HOLITOM_LAYER
from .holitom import holitom
from .llm_pruning import LLMPruner, Stage
from .pdrop import LAYERS as PDROP_LAYERS
from .pdrop import pdrop
from .pool import PoolReducer
from .prumerge import NEIGHBOURS, PruMergeReducer
from .random_choice import RandomReducer
from .schedule import (
    first_stage_tokens,
    layer_mean,
    mean_schedule,
    minimum_mean,
    scaled_layers,
)
from .sparsevlm import LAYERS as SPARSEVLM_LAYERS
from .sparsevlm import sparsevlm
from .tome import ToMeMerge, ToMeReducer, merge_schedule
from .visionzip import VisionZipReducer
from .vispruner import VisPrunerReducer
from .vscan import LAYER as VSCAN_LAYER
from .vscan import LLM_KEEP as VSCAN_KEEP
from .vscan import ShallowCLSAttention, VScanReducer, shallow_layer

METHODS = (
    "none",
    "vistog",
    "pool",
    "random",
    "tome",
    "visionzip",
    "prumerge",
    "fastv",
    "divprune",
    "vispruner",
    "cdpruner",
    "dart",
    "pdrop",
    "sparsevlm",
    "vscan",
    "downsample",
    "holitom",
)
REDUCERS = METHODS[2:]  # the training-free ones, which run on stock LLaVA (VisToG off)

OPTIONS: dict[str, dict[str, type]] = {  # method -> the options it accepts and their types
    "none": {},
    "vistog": {},
    "pool": {},
    "random": {},
    "tome": {"order": str, "matching": str},  # "reference" | "spatial"; "float32" | "model"
    "visionzip": {"contextual": int, "with_cls": int},  # with_cls 1 | 0
    "prumerge": {"neighbours": int, "extra_token": int},  # extra_token 1 | 0
    "fastv": {"fastv_layer": int},
    "divprune": {"precision": str},  # "model" | "float32"
    "vispruner": {"important_ratio": float, "ties": str, "precision": str},  # "reference" | "stable"; as divprune
    "cdpruner": {},
    "dart": {"layer": int, "pivot_order": str},  # "set" | "norm"
    "pdrop": {"layers": str},  # comma-separated decoder layers, e.g. "2,6,12"
    "sparsevlm": {"layers": str},
    "vscan": {"layer": int},
    "downsample": {},
    "holitom": {"layer": int},
}
FASTV_LAYER = 2  # the paper's K

# How `budget` counts visual tokens per image (AppliedMethod.budget_convention; the report says which a row uses).
LLM_INPUT = "llm_input"  # every decoder layer works on `budget` tokens per image
AFTER_LAYER = "after_layer"  # FastV's own: `budget` from layer `fastv_layer` on, all P before it
LAYER_MEAN = "layer_mean"  # the mean over decoder layers ("equivalent tokens", PyramidDrop / SparseVLM)
CONVENTIONS = {
    "fastv": AFTER_LAYER,
    "dart": LAYER_MEAN,
    "pdrop": LAYER_MEAN,
    "sparsevlm": LAYER_MEAN,
    "vscan": LAYER_MEAN,
    "holitom": LAYER_MEAN,
}
LLM_INPUT_STAGE = ("divprune", "cdpruner")  # select at LLM layer 0: P placeholders, K from layer 0 on
STAGED = {
    "vscan": (VSCAN_LAYER, VSCAN_KEEP),
    "holitom": (HOLITOM_LAYER, 1 - HOLITOM_RATIO),
}  # method -> (paper layer, K1 / K0)


@dataclass(frozen=True)
class AppliedMethod:
    """What `apply_method` configured on a model (read by the profiler for its analytic costs and by the runner).

    Per-layer facts, for analytic FLOPs: decoder layer l works on `layer_tokens[l]` visual tokens per image (prefill
    queries and cached keys alike), where the prompt holds `tokens_per_image` per image and the projector projects
    `tokens_per_image`; the vision encoder's layer i runs on `encoder_tokens[i]` tokens per image (CLS included).
    """

    method: str
    budget: int  # what --budgets asked for, counted as `budget_convention` says
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    tokens_per_image: int = 0  # placeholders per image in the prompt (and tokens through the projector)
    fastv_layer: int | None = None  # FastV's K: layers 0..K-1 run at `tokens_per_image`; None for other methods
    budget_convention: str = LLM_INPUT  # llm_input | after_layer | layer_mean
    llm_input_tokens: int = 0  # visual tokens per image entering decoder layer 0
    layer_tokens: tuple[int, ...] = ()  # visual tokens per image in each decoder layer (len = L)
    mean_layer_tokens: float = 0.0  # mean of `layer_tokens` (equals budget under layer_mean, up to rounding)
    encoder_tokens: tuple[int, ...] = ()  # tokens per image (CLS included) in each vision encoder layer run
    llm_attention: tuple[str, ...] = ()  # the attention implementation of each decoder layer (none is changed)
    vision_attention: str = "sdpa"  # the vision tower's kernel (VisToGVisionTower calls SDPA)
    scored_llm_layers: tuple[int, ...] = ()  # layers whose q / k also feed a float32 score product (no eager)
    vision_scores: str = ""  # extra attention the method computes in the tower, "" if none


@dataclass(frozen=True)
class _Parts:
    """What `_build` makes for a method: each None where the method has none."""

    reducer: Any = None  # a TokenReducer, after the vision tower
    merge: Any = None  # a TokenMerge, inside the encoder
    pruner: LLMPruner | None = None  # inside the LLM
    tower_hooks: tuple = ()  # vision-tower hooks it reads (install(tower) / remove()): VScan's shallow attention


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
    _check_checkpoint(model, method, budget)
    parts = _build(model, method, budget, seed, options)  # validates before anything changes
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
    applied = _describe(model, method, budget, seed, options, parts)
    object.__setattr__(model, _STATE, _Installed(applied, undo))
    assert model.num_visual_tokens == applied.tokens_per_image, (model.num_visual_tokens, applied.tokens_per_image)


def _check_checkpoint(model, method: str, budget: int) -> None:
    num_patches = model.config.num_patches
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


def _describe(model, method: str, budget: int, seed: int, options: dict, parts: _Parts) -> AppliedMethod:
    """The AppliedMethod record of what `parts` do on `model`."""
    num_layers = model.config.text_config.num_hidden_layers
    per_image = model.num_visual_tokens if parts.pruner is None else parts.pruner.tokens_per_image
    if parts.reducer is not None:
        per_image = parts.reducer.budget
    layers = parts.pruner.layer_tokens(num_layers) if parts.pruner is not None else (per_image,) * num_layers
    needs_cls = parts.reducer is not None and parts.reducer.needs_cls_attention
    return AppliedMethod(
        method,
        budget,
        seed,
        MappingProxyType(dict(options)),
        per_image,
        fastv_layer=parts.pruner.stages[0].layer if method == "fastv" else None,
        budget_convention=CONVENTIONS.get(method, LLM_INPUT),
        llm_input_tokens=layers[0],
        layer_tokens=layers,
        mean_layer_tokens=layer_mean(layers),
        encoder_tokens=_encoder_tokens(model, parts.merge),
        llm_attention=(model.config.text_config._attn_implementation or "eager",) * num_layers,
        scored_llm_layers=parts.pruner.scored_layers if parts.pruner is not None else (),
        vision_scores=("CLS attention at the feature layer (float32, from its q / k)" if needs_cls else "")
        + "".join(f" and at encoder layer {hook.layer_index}" for hook in parts.tower_hooks),
    )


def _encoder_tokens(model, merge) -> tuple[int, ...]:
    tower = model.model.vision_tower
    runs = tower.layers_to_run(model.config.vision_feature_layer)
    count = 1 + model.config.num_patches + (model.config.num_semantic_tokens or 0)
    if isinstance(merge, GridDownsample):
        return (count,) + (1 + merge.budget,) * (runs - 1)
    if isinstance(merge, ToMeMerge):
        counts = []
        for merged in merge.schedule:
            counts.append(count)
            count -= merged
        return tuple(counts)
    return (count,) * runs


def _build(model, method: str, budget: int, seed: int, options: dict) -> _Parts:
    """The parts of `method` at `budget` on `model`; raises UsageError for what cannot run."""
    if method in ("none", "vistog"):
        return _Parts()
    problem = config_problem(model.config, method, budget=budget, **options)
    if problem:
        raise UsageError(f"{method}: {problem}")
    return _BUILDERS[method](model, budget, seed, options)


def _vision_parts(model, budget: int, seed: int, options: dict) -> dict[str, Callable[[], _Parts]]:
    num_patches = model.config.num_patches
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    tower = model.model.vision_tower
    runs = tower.layers_to_run(model.config.vision_feature_layer)  # encoder layers run
    neighbours = options.get("neighbours", NEIGHBOURS)
    if neighbours is not None and neighbours < 1:
        raise UsageError(f"prumerge neighbours must be >= 1, got {neighbours}")
    return {
        "pool": lambda: _Parts(PoolReducer(budget, grid=grid)),
        "random": lambda: _Parts(RandomReducer(budget, num_patches, seed=seed)),
        "tome": lambda: _Parts(
            ToMeReducer(budget),
            ToMeMerge(merge_schedule(num_patches, budget, runs), **_given(options, "order", "matching")),
        ),
        "visionzip": lambda: _Parts(
            VisionZipReducer(
                budget,
                num_patches,
                vision.num_attention_heads,
                contextual=options.get("contextual"),
                **_given(options, "with_cls"),
            )
        ),
        "prumerge": lambda: _Parts(
            PruMergeReducer(
                budget, num_patches, tower.encoder.layers[runs], neighbours, **_given(options, "extra_token")
            )
        ),
        "vispruner": lambda: _Parts(
            VisPrunerReducer(budget, num_patches, **_given(options, "important_ratio", "ties", "precision"))
        ),
        "downsample": lambda: _Parts(ToMeReducer(budget), GridDownsample(budget, grid)),
    }


def _vision_method(method: str):
    return lambda model, budget, seed, options: _vision_parts(model, budget, seed, options)[method]()


def _llm_parts(model, method: str, budget: int, options: dict) -> _Parts:
    num_patches, image_token = model.config.num_patches, model.config.image_token_id
    num_layers = model.config.text_config.num_hidden_layers
    if method == "fastv":
        return _Parts(pruner=fastv(budget, options.get("fastv_layer", FASTV_LAYER), num_patches, image_token))
    if method == "pdrop":
        return _Parts(
            pruner=pdrop(budget, num_layers, _stage_layers(options, PDROP_LAYERS, num_layers), num_patches, image_token)
        )
    if method == "sparsevlm":
        layers = _stage_layers(options, SPARSEVLM_LAYERS, num_layers)
        return _Parts(pruner=sparsevlm(budget, num_layers, layers, num_patches, image_token))
    if method == "dart":
        layer = _llm_layer(options, DART_LAYER, num_layers)
        (keep,) = mean_schedule(budget, num_layers, num_patches, (layer,), "dart")
        selector = DARTSelector(model.model.language_model.norm, **_given(options, "pivot_order"))
        return _Parts(pruner=LLMPruner((Stage(layer, keep),), selector, num_patches, image_token))
    if method == "vscan":
        layer = _llm_layer(options, VSCAN_LAYER, num_layers)
        first = first_stage_tokens(budget, num_layers, layer, num_patches, VSCAN_KEEP)
        (keep,) = mean_schedule(budget, num_layers, first, (layer,), "vscan")
        vision, tower = model.config.vision_config, model.model.vision_tower
        shallow = ShallowCLSAttention(
            shallow_layer(len(tower.encoder.layers), tower.layers_to_run(model.config.vision_feature_layer))
        )
        reducer = VScanReducer(first, num_patches, vision.image_size // vision.patch_size, shallow)
        return _Parts(
            reducer,
            pruner=LLMPruner((Stage(layer, keep),), LastTokenAttention(), first, image_token),
            tower_hooks=(shallow,),
        )
    if method == "holitom":
        layer = _llm_layer(options, HOLITOM_LAYER, num_layers)
        return _Parts(pruner=holitom(budget, num_layers, layer, num_patches, image_token))
    selector = DivPruneSelector(**_given(options, "precision")) if method == "divprune" else CDPrunerSelector()
    return _Parts(pruner=LLMPruner((Stage(0, budget),), selector, num_patches, image_token))


def _given(options: dict, *names: str) -> dict:
    """The options among `names` that were given (None or absent: the reducer's default, the reference's way)."""
    return {name: options[name] for name in names if options.get(name) is not None}


def _llm_layer(options: dict, paper_layer: int, num_layers: int) -> int:
    layer = options.get("layer")
    return layer if layer is not None else scaled_layers((paper_layer,), num_layers)[0]


def _stage_layers(options: dict, paper_layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """The `layers` option ("2,6,12") or the paper's layers scaled to this depth."""
    text = options.get("layers")
    if text is None:
        return scaled_layers(paper_layers, num_layers)
    try:
        layers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"layers must be comma-separated integers, e.g. 2,6,12; got {text!r}") from None
    if list(layers) != sorted(set(layers)) or not all(1 <= layer < num_layers for layer in layers):
        raise UsageError(f"layers must increase within 1..{num_layers - 1} for a {num_layers}-layer LLM, got {text}")
    return layers


_BUILDERS: dict[str, Callable[..., _Parts]] = {
    **{
        name: _vision_method(name)
        for name in ("pool", "random", "tome", "visionzip", "prumerge", "vispruner", "downsample")
    },
    **{
        name: (lambda model, budget, seed, options, name=name: _llm_parts(model, name, budget, options))
        for name in ("fastv", "pdrop", "sparsevlm", "dart", *STAGED, *LLM_INPUT_STAGE)
    },
}


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


def config_problem(config, method: str, *, budget: int | None = None, **options) -> str | None:
    """Why `method` cannot run on a checkpoint with this config (a LlavaConfig / VisToGConfig, no weights), or None.

    The rules of `_build` that the config alone decides (the LLM layers of in-LLM methods, PruMerge's layer after the
    feature layer) and, given `budget`, whether a layer-mean budget is reachable, so a sweep can refuse an impossible
    combination before it loads anything."""
    method = check_method(method)
    family = family_of(getattr(config, "model_type", None))
    if family is not None:  # LLaVA-NeXT / OneVision / Qwen2.5-VL: the methods that apply there (one line otherwise)
        from ..model.family_reducers import refusal

        return refusal(family, method)
    num_layers = config.text_config.num_hidden_layers
    vision = config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    if method == "prumerge":
        feature_layer = config.vision_feature_layer
        runs = feature_layers_run(feature_layer, vision.num_hidden_layers)
        if runs >= vision.num_hidden_layers:
            return (
                f"prumerge reads the encoder layer after the feature layer; the feature layer "
                f"({feature_layer}) is the last of {vision.num_hidden_layers}"
            )
    if method == "fastv":
        fastv_layer = options.get("fastv_layer", FASTV_LAYER)
        if not 1 <= fastv_layer < num_layers:
            return f"fastv_layer must be in 1..{num_layers - 1} for a {num_layers}-layer LLM, got {fastv_layer}"
    if CONVENTIONS.get(method) != LAYER_MEAN:
        return None
    if num_layers < 2:
        return f"{method} prunes between decoder layers; this LLM has {num_layers}"
    paper = {
        "dart": (DART_LAYER,),
        "pdrop": PDROP_LAYERS,
        "sparsevlm": SPARSEVLM_LAYERS,
        **{name: (layer,) for name, (layer, _) in STAGED.items()},
    }
    try:
        layers = _stage_layers(options, paper[method], num_layers)
    except UsageError as error:
        return str(error)
    if options.get("layer") is not None:
        layers = (options["layer"],)
        if not 1 <= layers[0] < num_layers:
            return f"{method} layer must be in 1..{num_layers - 1} for a {num_layers}-layer LLM, got {layers[0]}"
    if budget is None:
        return None
    first = (
        first_stage_tokens(budget, num_layers, layers[0], num_patches, STAGED[method][1])
        if method in STAGED
        else num_patches
    )
    lowest = minimum_mean(num_layers, first, layers[0])
    if budget < lowest:
        return (
            f"{method} keeps {first} visual tokens per image in layers 0..{layers[0] - 1} of {num_layers}: "
            f"its layer-mean budget must be at least {math.ceil(lowest)}, got {budget}"
            + (" (an earlier first layer: option layers=...)" if method in ("pdrop", "sparsevlm") else "")
        )
    return None


__all__ = [
    "METHODS",
    "OPTIONS",
    "REDUCERS",
    "AppliedMethod",
    "applied_method",
    "apply_method",
    "config_problem",
    "remove_method",
    "tokens_per_image",
]
