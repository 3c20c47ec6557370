"""Tiny random-weight models and processors built from configs (nothing downloadable here), shared by test files.

In the spirit of transformers' `ModelTester`s: the tiny shape keeps LLaVA-1.5's 336 px / 14 px geometry (576 patches)
with small widths, and a word-level tokenizer that speaks the LLaVA-1.5 prompt format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers import PreTrainedTokenizerFast

from vistog_bench.model.shapes import SHAPES

SPECIAL = ["<pad>", "<s>", "</s>", "<image>", "<unk>"]
WORDS = (
    "USER: ASSISTANT: what colour is the shape ? how many shapes are there is a red green blue yellow circle square "
    "triangle left right top bottom centre yes no one two three four describe image video moves which way does "
    "answer with single word . , a an in of on"
).split()


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def tiny_processor(image_size: int = 336, vocab_size: int = 128) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tiny_tokenizer(vocab_size), patch_size=14,
        vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1,
    )


def tiny_llava_config() -> LlavaConfig:
    return LlavaConfig(**SHAPES["tiny"])


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
