"""Forward hooks on the model's stage modules: the profiler observes the model from outside, the model carries no
timing code.

    vision     model.model.vision_tower            VisToGVisionTower (CLIP + semantic tokens)
    grouping   model.model.grouping                VisToGGroupingLayer (absent with VisToG off)
    projector  model.model.multi_modal_projector   LLaVA's projector
    llm        model.model.language_model          LLaMA decoder: the first call of a generate is the prefill,
    lm_head    model.lm_head                       each later call one decode step; lm_head's output closes a
                                                   step (LLM pre-hook -> lm_head post-hook)

Those are LLaVA-1.5's paths; each family names its own (`ModelFamily.stage_paths`, model/families): LLaVA-NeXT /
OneVision have the same, Qwen2.5-VL's encoder is `model.visual`, which holds its PatchMerger (no projector stage of
its own); VisToG per view runs its grouped encoder pass through the stock layers directly, so it gives no vision span.

Hooks do nothing while torch.compile traces (`torch.compiler.is_compiling()`): a compiled region runs without them,
and the profiler falls back to coarser spans there (see profiler.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

# Which hooks each stage needs: a step of the LLM opens at the decoder's pre-hook and closes at lm_head's post-hook,
# so a decode step costs two hook calls (the tiny CPU model's steps are ~3 ms; every hook call shows).
PRE_HOOKS = ("vision", "grouping", "projector", "llm")
POST_HOOKS = ("vision", "grouping", "projector", "lm_head")


class StageObserver(Protocol):
    def enter(self, stage: str, module: nn.Module, args: tuple, kwargs: dict) -> None: ...

    def exit(self, stage: str, module: nn.Module, output: Any) -> None: ...


def stage_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The stage modules the model has, as its family names them (grouping is absent with VisToG off)."""
    from ..model.families import family_of_model

    return family_of_model(model).stage_modules(model)


def llm_new_tokens(args: tuple, kwargs: dict) -> tuple[int, int]:
    """(batch, new tokens) of a decoder call, from inputs_embeds [B, q, D] or input_ids [B, q]."""
    for name in ("inputs_embeds", "input_ids"):
        tensor = kwargs.get(name)
        if isinstance(tensor, torch.Tensor):
            return tensor.shape[0], tensor.shape[1]
    for tensor in args:
        if isinstance(tensor, torch.Tensor) and tensor.ndim >= 2:
            return tensor.shape[0], tensor.shape[1]
    return 0, 0


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


@contextmanager
def stage_hooks(model: nn.Module, observer: StageObserver) -> Iterator[list]:
    """Install forward hooks on every stage module (PRE_HOOKS / POST_HOOKS), calling `observer`; all are removed on
    exit. Dynamo sees `is_compiling()` true while tracing, so a compiled region keeps no trace of the hooks."""
    handles = []

    def add(stage: str, module: nn.Module) -> None:
        enter, exit_ = observer.enter, observer.exit
        is_compiling = torch.compiler.is_compiling

        def pre(mod, args, kwargs):
            if not is_compiling():
                enter(stage, mod, args, kwargs)

        def post(mod, args, output):
            if not is_compiling():
                exit_(stage, mod, output)

        if stage in PRE_HOOKS:
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if stage in POST_HOOKS:
            handles.append(module.register_forward_hook(post))

    try:
        for stage, module in stage_modules(model).items():
            add(stage, module)
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def hook_count(model: nn.Module) -> int:
    """Forward hooks (pre and post) installed on any submodule: 0 once every profiler has detached."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


__all__ = [
    "PRE_HOOKS",
    "POST_HOOKS",
    "StageObserver",
    "stage_modules",
    "stage_hooks",
    "hook_count",
    "llm_new_tokens",
]
