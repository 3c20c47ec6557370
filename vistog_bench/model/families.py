"""Model families beyond LLaVA-1.5: LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL through transformers' own classes.

    family = family_of("qwen2_5_vl")                         # chosen from config.model_type
    model = load_pretrained(family.model_class(), path, ...) # transformers' class, weights as published
    inputs = family_inputs(processor, prompts, images)       # the processor expands each placeholder itself

Nothing of their modeling files is copied: the stock model runs as loaded, and a reducer hooks it from outside
(`reducers.family_pruning`). The processor decides how many visual tokens an image gives the LLM, and that count
depends on the image: LLaVA-NeXT tiles an image on its `image_grid_pinpoints` (anyres: a 336 px base view plus up to
4 tiles, 576 patches each, plus one newline token per row of the unpadded grid: up to 2,880 tokens for 672 x 672);
OneVision tiles on 36 grids up to 2304 px (`anyres_max_9`: the tile features are pooled back to at most 9 tiles'
worth), 729 SigLIP patches a view; Qwen2.5-VL resizes an image to multiples of 28 px within its min / max pixels and
gives one token per 2 x 2 merged patch (PatchMerger), so a 448 x 448 image gives 256 tokens and a 1344 x 1344 one
2,304.

Budget rule per family (`kept_tokens`; docs/model.md "Families"):
- LLaVA-NeXT and OneVision: `budget` is visual tokens per image in total across its tiles (base view, tiles and
  newline tokens together); an image that gives fewer keeps all of them.
- Qwen2.5-VL: `budget` is a percentage (1..100) of the image's own count, since that count depends on the image size;
  at least one token is kept.
Results record the unreduced count of every sample (the adapter's sample log, `visual_tokens_unreduced`) beside the
count the LLM received (`visual_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BatchFeature

from ..errors import UsageError

PER_IMAGE_TOTAL = "per_image_total"  # budget = visual tokens of one image, summed over its tiles
PERCENT_OF_OWN = "percent_of_own"  # budget = percentage of the image's own (size-dependent) count


@dataclass(frozen=True)
class Family:
    model_type: str  # config.model_type of the checkpoint
    class_name: str  # transformers' model class
    budget_rule: str  # PER_IMAGE_TOTAL | PERCENT_OF_OWN
    encoder: str  # what reads the pixels
    has_cls: bool  # whether the encoder output the LLM reads carries a CLS token (none of these does)
    full_budget: int | None  # the budget `none` takes when none is given (percent: 100; per image: None = all)

    def model_class(self):
        import transformers

        return getattr(transformers, self.class_name)


FAMILIES: dict[str, Family] = {
    "llava_next": Family("llava_next", "LlavaNextForConditionalGeneration", PER_IMAGE_TOTAL,
                         "CLIP ViT-L/14-336, anyres tiles (feature layer -2, CLS dropped)", False, None),
    "llava_onevision": Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", PER_IMAGE_TOTAL,
                              "SigLIP-so400m/14-384, anyres_max_9 tiles (no CLS)", False, None),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", PERCENT_OF_OWN,
                         "Qwen2.5-VL ViT (window attention, 2D RoPE) + PatchMerger (no CLS)", False, 100),
}  # fmt: skip


def family_of(model_type: str | None) -> Family | None:
    """The family of a config's model_type, None for LLaVA-1.5 / VisToG (and anything else)."""
    return FAMILIES.get(model_type or "")


def model_family(model) -> Family | None:
    """The family of a loaded model (None for VisToGForConditionalGeneration)."""
    return family_of(getattr(model.config, "model_type", None))


def image_token_id(model) -> int:
    config = model.config
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


def check_family_budget(family: Family, budget: int | None) -> int | None:
    """A budget as the family's rule reads it; None means every visual token (LLaVA-NeXT / OneVision)."""
    if budget is None:
        return family.full_budget
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise UsageError(f"budget must be an integer, got {budget!r}")
    if family.budget_rule == PERCENT_OF_OWN and not 1 <= budget <= 100:
        raise UsageError(f"{family.model_type}: budget is a percentage of each image's own visual tokens, "
                         f"in 1..100; got {budget}")  # fmt: skip
    if family.budget_rule == PER_IMAGE_TOTAL and budget < 1:
        raise UsageError(f"{family.model_type}: budget is visual tokens per image (all tiles), >= 1; got {budget}")
    return budget


def kept_tokens(family: Family, budget: int | None, count: int) -> int:
    """Visual tokens an image whose unreduced count is `count` keeps at `budget` (the family's rule)."""
    if budget is None:
        return count
    if family.budget_rule == PERCENT_OF_OWN:
        return max(1, min(count, math.floor(count * budget / 100 + 0.5)))
    return min(count, budget)


def image_runs(ids: torch.Tensor, token_id: int) -> list[torch.Tensor]:
    """Positions of each image's visual tokens in one sample's ids [T]: one contiguous run per image, in order
    (the processors expand each placeholder in place; the templates put text or markers between images)."""
    positions = (ids == token_id).nonzero().squeeze(1)
    if positions.numel() == 0:
        return []
    breaks = (positions[1:] != positions[:-1] + 1).nonzero().squeeze(1) + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


def family_inputs(processor, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
                  padding_side: str = "left") -> BatchFeature:
    """The processor's own inputs for `prompts` (each with one placeholder per image, as the template renders it)
    and their images, left padded: what transformers documents (`processor(images=..., text=...)`)."""
    flat = [image.convert("RGB") for sample in images for image in sample]
    tokenizer = processor.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        return processor(text=list(prompts), images=flat or None, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = previous


__all__ = [
    "FAMILIES", "Family", "PER_IMAGE_TOTAL", "PERCENT_OF_OWN", "check_family_budget", "family_inputs", "family_of",
    "image_runs", "image_token_id", "kept_tokens", "model_family",
]
