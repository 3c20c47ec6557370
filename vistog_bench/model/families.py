"""Model families beyond LLaVA-1.5: LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL through transformers' own classes.

    family = family_of("qwen2_5_vl")                         # chosen from config.model_type
    model = load_pretrained(family.model_class(), path, ...) # transformers' class, weights as published
    inputs = family_inputs(processor, prompts, images)       # the processor expands each placeholder itself
    inputs = family_inputs(processor, prompts, images, videos)  # + videos (VideoFrames) on their own video path

Nothing of their modeling files is copied: the stock model runs as loaded, and a reducer hooks it from outside
(`model.family_reducers`). The processor decides how many visual tokens an image gives the LLM, and that count
depends on the image: LLaVA-NeXT tiles an image on its `image_grid_pinpoints` (anyres: a 336 px base view plus up to
4 tiles, 576 patches each, plus one newline token per row of the unpadded grid: up to 2,928 tokens for 672 x 672);
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

Video (docs/model.md "Families", "Video"). OneVision and Qwen2.5-VL take a video as a video: its sampled frames go to
the processor's `videos=` with the template's video placeholder (OneVision `<video>`, Qwen2.5-VL
`<|vision_start|><|video_pad|><|vision_end|>`), and the processor expands the placeholder to one contiguous run of
video tokens (`visual_runs`): OneVision F x 196 (each frame's 27 x 27 SigLIP grid pooled 2 x 2 to 14 x 14) + 1 newline;
Qwen2.5-VL (F / 2) x (H / 28) x (W / 28) (temporal patch 2, `video_grid_thw`; `second_per_grid_ts` = 2 / sampled fps,
from the frames' VideoMetadata, places the frames in time in mRoPE), each frame resized into QWEN_VIDEO_PIXELS.
Frames are sampled and sized as lmms-eval samples and sizes them for the same model (`video_frame_indices`,
`Family.video_pixels`). LLaVA-NeXT has no video path in transformers' image model: its frames stay images
(`Family.video_frames` None), as for LLaVA-1.5. The budget rule applies to a video's run as to one image's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from ..errors import UsageError

PER_IMAGE_TOTAL = "per_image_total"  # budget = visual tokens of one image, summed over its tiles
PERCENT_OF_OWN = "percent_of_own"  # budget = percentage of the image's own (size-dependent) count
# How a native-video family samples a video's frames: as lmms-eval samples them for that model (`video_frame_indices`).
UNIFORM_FRAMES = "uniform"  # llava_hf (OneVision): max_frames, np.linspace(0, n - 1, max_frames, dtype=int)
EVEN_FRAMES = "even"  # qwen2_5_vl: min(max_frames, n) floored to even (>= 2), qwen_vl_utils' rounded linspace
# Pixels per Qwen2.5-VL video frame, as lmms-eval 0.7.3's qwen2_5_vl sizes frames: its defaults min_pixels = 256 x 28 x
# 28 and max_pixels = 1605632 go to qwen_vl_utils 0.0.14 `fetch_video`, which also caps a frame at VIDEO_MAX_TOKEN_NUM
# x 28 x 28 = 768 x 28 x 28, and bounds the whole video at 128000 x 28 x 28 x 0.9 px over its frame pairs (binding
# beyond ~300 frames; transformers' Qwen2VLVideoProcessor applies the same bound with `cap_pixels_per_frame=True`).
# The hub checkpoint publishes no video limits, and transformers' video processor then takes the image limits (up to
# 12,845,056 px: 16,384 tokens per frame pair).
QWEN_VIDEO_PIXELS = (256 * 28 * 28, min(1605632, 768 * 28 * 28))


@dataclass(frozen=True)
class Family:
    model_type: str  # config.model_type of the checkpoint
    class_name: str  # transformers' model class
    budget_rule: str  # PER_IMAGE_TOTAL | PERCENT_OF_OWN
    encoder: str  # what reads the pixels
    has_cls: bool  # whether the encoder output the LLM reads carries a CLS token (none of these does)
    full_budget: int | None  # the budget `none` takes when none is given (percent: 100; per image: None = all)
    video_frames: str | None = None  # UNIFORM_FRAMES | EVEN_FRAMES: a native video path; None: frames as images
    video_pixels: tuple[int, int] | None = None  # (min, max) pixels a video frame is resized into; None: processor's

    def model_class(self):
        import transformers

        return getattr(transformers, self.class_name)


FAMILIES: dict[str, Family] = {
    "llava_next": Family(
        "llava_next",
        "LlavaNextForConditionalGeneration",
        PER_IMAGE_TOTAL,
        "CLIP ViT-L/14-336, anyres tiles (feature layer -2, CLS dropped)",
        False,
        None,
    ),
    "llava_onevision": Family(
        "llava_onevision",
        "LlavaOnevisionForConditionalGeneration",
        PER_IMAGE_TOTAL,
        "SigLIP-so400m/14-384, anyres_max_9 tiles (no CLS)",
        False,
        None,
        UNIFORM_FRAMES,
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration",
        PERCENT_OF_OWN,
        "Qwen2.5-VL ViT (window attention, 2D RoPE) + PatchMerger (no CLS)",
        False,
        100,
        EVEN_FRAMES,
        QWEN_VIDEO_PIXELS,
    ),
}


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


def video_token_id(model) -> int | None:
    """The id a video placeholder expands to (Qwen2.5-VL's differs from its image id), None without a video path."""
    config = model.config
    value = getattr(config, "video_token_id", None)
    return value if value is not None else getattr(config, "video_token_index", None)


def check_family_budget(family: Family, budget: int | None) -> int | None:
    """A budget as the family's rule reads it; None means every visual token (LLaVA-NeXT / OneVision)."""
    if budget is None:
        return family.full_budget
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise UsageError(f"budget must be an integer, got {budget!r}")
    if family.budget_rule == PERCENT_OF_OWN and not 1 <= budget <= 100:
        raise UsageError(
            f"{family.model_type}: budget is a percentage of each image's own visual tokens, in 1..100; got {budget}"
        )
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


def visual_runs(ids: torch.Tensor, model) -> list[torch.Tensor]:
    """Each image's and each video's run of visual tokens in one sample's ids [T], in prompt order."""
    runs = image_runs(ids, image_token_id(model))
    video = video_token_id(model)
    if video is not None:
        runs += image_runs(ids, video)
    return sorted(runs, key=lambda run: int(run[0]))


@dataclass(frozen=True)
class VideoFrames:
    """A video's sampled frames [F, H, W, 3] uint8 and where they came from (the processor's VideoMetadata)."""

    frames: np.ndarray
    fps: float  # the video's own frame rate
    total_frames: int
    indices: tuple[int, ...]  # [F] the frames taken


def uniform_frame_indices(total: int, max_frames: int) -> list[int]:
    """`max_frames` indices spread over a `total`-frame video, np.linspace(0, total - 1, max_frames, dtype=int)
    (lmms-eval's llava_hf `load_video`; a shorter video repeats frames)."""
    return np.linspace(0, total - 1, max_frames, dtype=int).tolist()


def video_frame_indices(family: Family, total: int, max_frames: int) -> list[int]:
    """Frame indices of a `total`-frame video under the family's sampling (lmms-eval 0.7.3's for the same model):
    UNIFORM_FRAMES: `max_frames` indices, np.linspace(0, total - 1, max_frames, dtype=int) (models/simple/llava_hf.py
    `load_video`; repeats frames of a shorter video); EVEN_FRAMES: nframes = min(max_frames, total) floored to even,
    at least 2 (models/chat/qwen2_5_vl.py), at torch.linspace(0, total - 1, nframes).round() (qwen_vl_utils 0.0.14
    `_read_video_decord`, which that model calls)."""
    if family.video_frames == UNIFORM_FRAMES:
        return uniform_frame_indices(total, max_frames)
    if family.video_frames == EVEN_FRAMES:
        count = max(2, min(max_frames, total) // 2 * 2)
        return torch.linspace(0, total - 1, count).round().long().tolist()
    raise ValueError(f"{family.model_type} has no video path; its frames are images")


def family_inputs(
    processor,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    videos: Sequence[Sequence[VideoFrames]] = (),
    video_pixels: tuple[int, int] | None = None,
    padding_side: str = "left",
) -> BatchFeature:
    """The processor's own inputs for `prompts` (each with one placeholder per image and per video, as the template
    renders them) and their images and videos, left padded: what transformers documents
    (`processor(images=..., videos=..., text=...)`). Videos come sampled (`do_sample_frames=False`); their
    VideoMetadata gives Qwen2.5-VL its sampled fps (`second_per_grid_ts`); `video_pixels` (min, max) resizes video
    frames only (`Family.video_pixels`, Qwen2.5-VL's video processor, with qwen_vl_utils' total-pixel bound)."""
    from transformers.video_utils import VideoMetadata

    flat = [image.convert("RGB") for sample in images for image in sample]
    clips = [clip for sample in videos for clip in sample]
    media = {}
    if clips:
        media = {
            "videos": [clip.frames for clip in clips],
            "do_sample_frames": False,
            "video_metadata": [
                VideoMetadata(total_num_frames=c.total_frames, fps=c.fps, frames_indices=list(c.indices)) for c in clips
            ],
        }
        if video_pixels is not None:
            size = {"shortest_edge": video_pixels[0], "longest_edge": video_pixels[1]}
            media["videos_kwargs"] = {"size": size, "cap_pixels_per_frame": True}
    tokenizer = processor.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        return processor(text=list(prompts), images=flat or None, padding=True, return_tensors="pt", **media)
    finally:
        tokenizer.padding_side = previous


__all__ = [
    "EVEN_FRAMES",
    "FAMILIES",
    "Family",
    "PER_IMAGE_TOTAL",
    "PERCENT_OF_OWN",
    "QWEN_VIDEO_PIXELS",
    "UNIFORM_FRAMES",
    "VideoFrames",
    "check_family_budget",
    "family_inputs",
    "family_of",
    "image_runs",
    "image_token_id",
    "kept_tokens",
    "model_family",
    "uniform_frame_indices",
    "video_frame_indices",
    "video_token_id",
    "visual_runs",
]
