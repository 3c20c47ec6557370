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


__all__ = [
    "EVEN_FRAMES",
    "FAMILY_OBJECTS",
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
    "family_for",
    "family_inputs",
    "family_of_model",
    "find_family",
    "image_runs",
    "image_token_id",
    "uniform_frame_indices",
    "video_token_id",
    "visual_runs",
]
