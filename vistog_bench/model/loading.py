"""Load a local checkpoint in the Hugging Face layout: stock LLaVA-1.5 (`model_type: llava`, as llava-hf publishes
it), a saved VisToG model (`model_type: vistog`, or `vistog_llava_next` / `vistog_llava_onevision` per view), or a
model of another family (`llava_next`, `llava_onevision`, `qwen2_5_vl`: transformers' own class); the family chosen
from `config.model_type` (`model.families.family_for`) loads it. Safetensors only; code shipped with a checkpoint
never runs.

Every reader of a checkpoint goes through this module: `refuse_remote_code` (the one check that a folder asks for no
code of its own), `load_config`, `load_processor`, `load_pretrained` (weights) and `load_checkpoint` (all of them).
transformers' `from_pretrained` on a folder whose configs carry `auto_map` asks "run the custom code? [y/N]" on the
terminal unless `trust_remote_code=False` is passed, and a piped `y` runs the folder's Python: so the folder is
refused before transformers sees it, and `trust_remote_code=False` is passed as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoProcessor
from transformers.utils import logging as hf_logging

from ..dtypes import torch_dtype
from ..errors import UsageError
from .families import MODEL_TYPES, family_for
from .grouping import SCALE_NAME
from .modeling_views import VIEWS_CLASSES, legacy_config

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# The files transformers reads class names (and `auto_map`, code to import) from when it loads a folder.
CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
CLASS_KEYS = (
    "architectures",
    "processor_class",
    "tokenizer_class",
    "image_processor_type",
    "feature_extractor_type",
    "video_processor_type",
)
# ours: registered with transformers' Auto classes
OWN_CLASSES = (
    "VisToGForConditionalGeneration",
    "VisToGConfig",
    *(cls.__name__ for cls in VIEWS_CLASSES.values()),
    *(cls.config_class.__name__ for cls in VIEWS_CLASSES.values()),
)


def refuse_remote_code(path: str | Path) -> None:
    """UsageError naming the first config file of `path` that asks for code of its own: an `auto_map` anywhere in it,
    or a class (architectures, processor / tokenizer / image / feature-extractor / video processor class) that is
    neither transformers' nor ours. Files are only parsed as JSON here; nothing of the folder is imported."""
    import transformers

    path = Path(path)
    for name in CONFIG_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file} is not valid JSON: {exc}") from None
        items = list(_items(data))
        if any(key == "auto_map" for key, _ in items):
            raise UsageError(
                f"{file} asks to run code shipped with the checkpoint (auto_map); "
                "vistog-bench never runs a checkpoint's own code"
            )
        for key, value in items:
            if key in CLASS_KEYS:
                for class_name in value if isinstance(value, list) else [value]:
                    if class_name is None:
                        continue
                    known = (
                        isinstance(class_name, str)
                        and class_name.isidentifier()
                        and (
                            class_name in OWN_CLASSES
                            or hasattr(transformers, class_name)
                            or (class_name.endswith("Fast") and hasattr(transformers, class_name.removesuffix("Fast")))
                            # transformers 4's name of an image processor (openai/clip-vit-large-patch14-336's
                            # preprocessor_config.json names CLIPFeatureExtractor; transformers 5 loads
                            # CLIPImageProcessor)
                            or (
                                class_name.endswith("FeatureExtractor")
                                and hasattr(
                                    transformers, class_name.removesuffix("FeatureExtractor") + "ImageProcessor"
                                )
                            )
                        )
                    )
                    if not known:
                        raise UsageError(
                            f"{file} names {key} {class_name!r}, which is not a transformers class "
                            "(code shipped with the checkpoint); vistog-bench never runs it"
                        )


def _items(data: Any):
    """Every (key, value) of a JSON document, nested objects and lists included."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield key, value
            yield from _items(value)
    elif isinstance(data, list):
        for value in data:
            yield from _items(value)


def load_config(path: str | Path):
    """The checkpoint's config (AutoConfig; ours for VisToG, an earlier per-view VisToG folder's included), remote
    code refused."""
    _check_folder(path)
    refuse_remote_code(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read the config of {path}: {str(exc).splitlines()[0]}") from None
    return legacy_config(path, config)


def load_processor(path: str | Path, auto_class=AutoProcessor):
    """The checkpoint's processor (AutoProcessor: tokenizer + image processor; or another Auto class, e.g.
    AutoImageProcessor for a vision tower's folder), remote code refused."""
    refuse_remote_code(path)
    try:
        return auto_class.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot load a processor from {path}: {str(exc).splitlines()[0]}") from None


def load_pretrained(cls, path: str | Path, **kwargs):
    """`cls.from_pretrained(path, safetensors only, no remote code)`; corrupt or mismatched weights are one line."""
    refuse_remote_code(path)
    try:
        scales = _scalar_scales(path)
        if scales:  # those shapes differ by design: loaded below, without transformers' mismatch report
            kwargs["ignore_mismatched_sizes"] = True
        previous = hf_logging.get_verbosity()
        if scales:
            hf_logging.set_verbosity_error()
        try:
            model = cls.from_pretrained(path, use_safetensors=True, trust_remote_code=False, **kwargs)
        finally:
            hf_logging.set_verbosity(previous)
        with torch.no_grad():
            for name, value in scales.items():
                model.get_parameter(name).copy_(value)
        return model
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:  # truncated / corrupt files, bad shapes
        raise UsageError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None


def _scalar_scales(path: str | Path) -> dict:
    """{name: value [1]} of the 0-d grouping scales in a checkpoint written while the scale was a scalar (it is [1]
    now); empty for any other checkpoint, for which only the files' headers are read."""
    scales = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            for key in handle.keys():
                if key.endswith(SCALE_NAME) and handle.get_slice(key).get_shape() == []:
                    scales[key] = handle.get_tensor(key).reshape(1)
    return scales


def _check_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"checkpoint folder not found: {path}")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
    return path


def checkpoint_model_type(path: str | Path) -> str:
    """Check that `path` holds a loadable LLaVA / VisToG / family checkpoint (asking for no code of its own) and return
    its model_type."""
    path = _check_folder(path)
    refuse_remote_code(path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))  # valid JSON: refuse_remote_code read it
    model_type = config.get("model_type") if isinstance(config, dict) else None
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
) -> tuple[Any, object]:
    """(model in eval mode, processor), the model as its family loads it (`families.ModelFamily.load`): a stock
    LLaVA checkpoint as VisToG-off (stock behaviour), another family's as transformers' own class, unchanged."""
    checkpoint_model_type(path)
    config = load_config(path)
    kwargs = dict(dtype=torch_dtype(dtype), attn_implementation=attn_implementation)
    model = family_for(config).load(path, config, **kwargs)
    processor = load_processor(path)
    return model.to(device).eval(), processor


__all__ = [
    "load_checkpoint",
    "load_config",
    "load_pretrained",
    "load_processor",
    "refuse_remote_code",
    "checkpoint_model_type",
]
