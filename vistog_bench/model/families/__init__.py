"""Model families: one object per kind of checkpoint, chosen once from `config.model_type`.

Glossary: family, a kind of checkpoint with its own processor, token counts and budget rule (base.py's
`ModelFamily` says what each one answers); stock, the checkpoint as published; VisToG, the same with VisToG's parts.

    family = family_for(config)            # LLaVA-1.5 (llava, vistog), LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL
    model = family.load(path, config)      # or loading.load_checkpoint(path), which asks the family
    family = family_of_model(model)        # the same object, from a loaded model's config

The adapter, the sweep, the profiler and the trainer ask the family object and hold no branch on the family. Adding
a family (Qwen3-VL, InternVL): one file here with a `ModelFamily` subclass, its instance in `FAMILY_OBJECTS`, and
tests. Nothing of transformers' modeling files is copied: stock models run as loaded, reducers hook them from
outside.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError
from .base import (
    EVEN_FRAMES,
    PER_IMAGE_TOTAL,
    PERCENT_OF_OWN,
    UNIFORM_FRAMES,
    ImageGeometry,
    ModelBatch,
    ModelFamily,
    VideoFrames,
    VisualTokenCounts,
    family_inputs,
    image_runs,
    image_token_id,
    uniform_frame_indices,
    video_token_id,
    visual_runs,
)
from .llava import LlavaFamily
from .llava_next import LlavaNextFamily
from .llava_onevision import LlavaOnevisionFamily
from .qwen2_5_vl import QWEN_VIDEO_PIXELS, Qwen25VLFamily

FAMILY_OBJECTS: tuple[ModelFamily, ...] = (LlavaFamily(), LlavaNextFamily(), LlavaOnevisionFamily(), Qwen25VLFamily())
_BY_MODEL_TYPE = {model_type: family for family in FAMILY_OBJECTS for model_type in family.model_types}
MODEL_TYPES = tuple(_BY_MODEL_TYPE)  # every config.model_type a checkpoint may have


def find_family(model_type: str | None) -> ModelFamily | None:
    """The family serving a config.model_type, None for one no family serves."""
    return _BY_MODEL_TYPE.get(model_type or "")


def family_for(config) -> ModelFamily:
    """The family of a checkpoint's config (UsageError for a model_type no family serves)."""
    model_type = getattr(config, "model_type", None)
    family = find_family(model_type)
    if family is None:
        where = getattr(config, "name_or_path", None) or "the checkpoint"
        raise UsageError(f"{where} holds a {model_type!r} model; expected one of: {', '.join(MODEL_TYPES)}")
    return family


def family_of_model(model) -> ModelFamily:
    """The family of a loaded model."""
    return family_for(model.config)


# -- the records reducers/families.py, family_attention.py and spec.py read (until they ask the family) ----------
@dataclass(frozen=True)
class Family:
    """A LLaVA-NeXT / OneVision / Qwen2.5-VL family as a record (LLaVA-1.5 has none: `family_of` gives None)."""

    model_type: str
    budget_rule: str
    full_budget: int | None  # the budget `none` takes when none is given (percent: 100; per image: None = all)
    video_frames: str | None = None
    video_pixels: tuple[int, int] | None = None


def _record(family: ModelFamily) -> Family:
    none = family.none_budget(None)  # these families' `none` budget reads no config
    return Family(family.model_type, family.budget_rule, none, family.video_frames, family.video_pixels)


FAMILIES: dict[str, Family] = {f.model_type: _record(f) for f in FAMILY_OBJECTS if f.budget_rule is not None}
_RECORDS = {t: FAMILIES[f.model_type] for f in FAMILY_OBJECTS if f.model_type in FAMILIES for t in f.model_types}


def family_of(model_type: str | None) -> Family | None:
    """The record of a config's model_type, None for LLaVA-1.5 / VisToG (and anything else)."""
    return _RECORDS.get(model_type or "")


def model_family(model) -> Family | None:
    """The record of a loaded model (None for LLaVA-1.5 / VisToG)."""
    return family_of(getattr(model.config, "model_type", None))


def check_family_budget(family: Family, budget: int | None) -> int | None:
    """A budget as the family's rule reads it; None means the family's own (`Family.full_budget`)."""
    if budget is None:
        return family.full_budget
    return find_family(family.model_type).check_budget(budget)


def kept_tokens(family: Family, budget: int | None, count: int) -> int:
    """Visual tokens an image whose unreduced count is `count` keeps at `budget` (the family's rule)."""
    return find_family(family.model_type).kept_tokens(budget, count)


__all__ = [
    "EVEN_FRAMES",
    "FAMILIES",
    "FAMILY_OBJECTS",
    "Family",
    "ImageGeometry",
    "MODEL_TYPES",
    "ModelBatch",
    "ModelFamily",
    "PER_IMAGE_TOTAL",
    "PERCENT_OF_OWN",
    "QWEN_VIDEO_PIXELS",
    "UNIFORM_FRAMES",
    "VideoFrames",
    "VisualTokenCounts",
    "check_family_budget",
    "family_for",
    "family_inputs",
    "family_of",
    "family_of_model",
    "find_family",
    "image_runs",
    "image_token_id",
    "kept_tokens",
    "model_family",
    "uniform_frame_indices",
    "video_token_id",
    "visual_runs",
]
