"""Model inputs from prompts rendered by `prompting.PromptBuilder` (e.g. `USER: <image>\n{question} ASSISTANT:`),
and where the visual tokens sit in them.

Glossary: B batch, T prompt length, run: one image's (or video's) contiguous positions of visual tokens in a sample.

LLaVA-1.5 (`build_inputs`): each `<image>` placeholder is expanded to the number of tokens one image gives the LLM
(576 stock, N with VisToG or a reducer), so the LLM sees exactly N visual tokens per image. A video is a list of
frames: one placeholder per frame, each expanded to N tokens, frames in temporal order. The other families
(`family_inputs`): the processor expands each placeholder to the image's own count, and a video's sampled frames
(`VideoFrames`) go to its `videos=`.

    inputs = build_inputs(processor, prompts, images, tokens_per_image=64)
    inputs = family_inputs(processor, prompts, images, videos)
    runs = visual_runs(inputs["input_ids"][0], model)      # [positions of image 1], [of image 2], ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from .prompting import IMAGE_TOKEN, image_token_of


def llava_prompt(question: str, num_images: int = 1, image_token: str = IMAGE_TOKEN) -> str:
    """The single-turn rendering of `prompting.LLAVA_PLAIN_CHAT_TEMPLATE` (the embedded models' turns), for tests and
    benchmarks that tokenise prompts without a template; a test checks the two agree."""
    placeholders = image_token * num_images
    return f"USER: {placeholders}\n{question} ASSISTANT:"


def expand_image_tokens(prompt: str, tokens_per_image: int, image_token: str = IMAGE_TOKEN) -> str:
    """Replace each `<image>` by `tokens_per_image` copies of it."""
    return prompt.replace(image_token, image_token * tokens_per_image)


def build_inputs(
    processor,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    tokens_per_image: int,
    padding_side: str = "left",
) -> BatchFeature:
    """Tokenise `prompts` (each with one `<image>` per entry of its `images`) and preprocess the images.

    Returns input_ids / attention_mask [B, T] (left padded for generation) and pixel_values [sum of images, 3, H, W]
    in prompt order. The processor's own placeholder expansion (fixed at 576) is bypassed on purpose.
    """
    image_token = image_token_of(processor)
    for prompt, sample_images in zip(prompts, images, strict=True):
        if prompt.count(image_token) != len(sample_images):
            raise ValueError(
                f"a prompt has {prompt.count(image_token)} {image_token} placeholders but {len(sample_images)} images"
            )
    texts = [expand_image_tokens(p, tokens_per_image, image_token) for p in prompts]
    tokenizer = processor.tokenizer
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        text_inputs = tokenizer(texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = previous_side
    flat_images = [image.convert("RGB") for sample_images in images for image in sample_images]
    data = dict(text_inputs)
    if flat_images:
        data["pixel_values"] = processor.image_processor(flat_images, return_tensors="pt")["pixel_values"]
    return BatchFeature(data=data)


@dataclass(frozen=True)
class VideoFrames:
    """A video's sampled frames [F, H, W, 3] uint8 and where they came from (the processor's VideoMetadata)."""

    frames: np.ndarray
    fps: float  # the video's own frame rate
    total_frames: int
    indices: tuple[int, ...]  # [F] the frames taken


def image_token_id(model) -> int:
    config = model.config
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


def video_token_id(model) -> int | None:
    """The id a video placeholder expands to (Qwen2.5-VL's differs from its image id), None without a video path."""
    config = model.config
    value = getattr(config, "video_token_id", None)
    return value if value is not None else getattr(config, "video_token_index", None)


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
    frames only (Qwen2.5-VL's video processor, with qwen_vl_utils' total-pixel bound)."""
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
    "IMAGE_TOKEN",
    "VideoFrames",
    "build_inputs",
    "expand_image_tokens",
    "family_inputs",
    "image_runs",
    "image_token_id",
    "image_token_of",
    "llava_prompt",
    "video_token_id",
    "visual_runs",
]
