"""Model inputs for any visual-token budget from prompts rendered by `prompting.PromptBuilder`
(e.g. `USER: <image>\n{question} ASSISTANT:`).

Each `<image>` placeholder is expanded to the number of tokens one image gives the LLM (576 stock, N with VisToG or
a reducer), so the LLM sees exactly N visual tokens per image. A video is a list of frames: one placeholder per frame,
each expanded to N tokens, frames in temporal order.
"""

from __future__ import annotations

from collections.abc import Sequence

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


__all__ = ["IMAGE_TOKEN", "llava_prompt", "expand_image_tokens", "build_inputs", "image_token_of"]
