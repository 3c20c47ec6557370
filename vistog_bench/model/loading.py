"""Load a local checkpoint in the Hugging Face layout: stock LLaVA-1.5 (`model_type: llava`, as llava-hf publishes
it) or a saved VisToG model (`model_type: vistog`). Safetensors only; `trust_remote_code` is never needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoProcessor, LlavaForConditionalGeneration

from ..errors import UsageError
from .modeling import VisToGForConditionalGeneration

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODEL_TYPES = ("llava", "vistog")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def checkpoint_model_type(path: str | Path) -> str:
    """Check that `path` holds a loadable LLaVA / VisToG checkpoint and return its model_type."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"checkpoint folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise UsageError(f"{config_file} is not valid JSON: {exc}") from None
    if model_type not in MODEL_TYPES:
        raise UsageError(f"{path} holds a {model_type!r} model; expected one of: {', '.join(MODEL_TYPES)}")
    if not any(path.glob("*.safetensors")):
        raise UsageError(f"{path} has no *.safetensors weights (only safetensors checkpoints are loaded)")
    if not any((path / name).is_file() for name in PROCESSOR_FILES):
        raise UsageError(f"{path} has no processor: one of {', '.join(PROCESSOR_FILES)} is needed")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{path} has no tokenizer: one of {', '.join(TOKENIZER_FILES)} is needed")
    return model_type


def load_checkpoint(
    path: str | Path, *, device: str = "cpu", dtype: str = "float32", attn_implementation: str = "sdpa"
) -> tuple[VisToGForConditionalGeneration, object]:
    """(model in eval mode, processor). A stock LLaVA checkpoint comes back as VisToG-off (stock behaviour)."""
    model_type = checkpoint_model_type(path)
    kwargs = dict(dtype=parse_dtype(dtype), attn_implementation=attn_implementation, use_safetensors=True)
    try:
        if model_type == "llava":
            model = VisToGForConditionalGeneration.from_llava(
                LlavaForConditionalGeneration.from_pretrained(path, **kwargs), num_semantic_tokens=None
            )
        else:
            model = VisToGForConditionalGeneration.from_pretrained(path, **kwargs)
    except (OSError, RuntimeError, SafetensorError) as exc:  # truncated or corrupt safetensors, mismatched shapes
        raise UsageError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None
    processor = AutoProcessor.from_pretrained(path)
    return model.to(device).eval(), processor


__all__ = ["load_checkpoint", "checkpoint_model_type", "parse_dtype", "DTYPES"]
