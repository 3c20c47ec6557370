"""Tiny random-weight models and processors built from configs (nothing downloadable here), for tests and benchmarks.

In the spirit of transformers' `ModelTester`s: the tiny shape keeps LLaVA-1.5's 336 px / 14 px geometry (576 patches)
with small widths, and a word-level tokenizer that speaks the LLaVA-1.5 prompt format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from vistog_bench.demo.processor import SPECIAL_TOKENS
from vistog_bench.demo.processor import tiny_processor as word_level_processor
from vistog_bench.model.presets import PRESETS

WORDS = (
    "user assistant : what colour is the shape ? how many shapes are there a red green blue yellow circle square "
    "triangle left right top bottom centre yes no one two three four describe image video moves which way does "
    "answer with single word . , an in of on"
).split()


def tiny_processor(image_size: int = 336, vocab_size: int = 128) -> LlavaProcessor:
    """The demo's word-level LLaVA processor, its vocabulary filled up to the tiny shape's `vocab_size` so that every
    id past the special tokens that a random-weight model can emit decodes to a word."""
    words = WORDS + [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS) - len(WORDS))]
    return word_level_processor(words, image_size, patch_size=14)


def tiny_llava_config() -> LlavaConfig:
    return LlavaConfig(**PRESETS["tiny"])


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(tiny_llava_config()).eval()


def save_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A stock tiny LLaVA checkpoint (weights + processor) in the Hugging Face layout."""
    tiny_llava(seed).save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return path


def random_images(count: int, size: int = 336, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
