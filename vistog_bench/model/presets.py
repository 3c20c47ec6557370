"""Architecture presets: named configs without weights, for tests, `--shape NAME` and analytic costs.

`llava-1.5-7b` / `-13b` follow the released `llava-hf/llava-1.5-{7b,13b}-hf` configs (CLIP ViT-L/14-336 +
Vicuna-1.5); `tiny` keeps LLaVA-1.5's 336 px / 14 px geometry (576 patches, so every real budget exists) with widths
small enough for a CPU test.
"""

from __future__ import annotations

import difflib

from ..errors import UsageError
from .config import VisToGConfig

CLIP_VIT_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)

PRESETS: dict[str, dict] = {
    "llava-1.5-7b": dict(
        vision_config=CLIP_VIT_L_336,
        text_config=dict(
            model_type="llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=32001,
        ),
        image_token_index=32000,
    ),
    "llava-1.5-13b": dict(
        vision_config=CLIP_VIT_L_336,
        text_config=dict(
            model_type="llama",
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=32001,
        ),
        image_token_index=32000,
    ),
    "tiny": dict(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=336,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=32,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=128,
            max_position_embeddings=2048,
            pad_token_id=3,  # the word-level tokenizer's ids (vistog_bench.demo.processor.SPECIAL_TOKENS)
        ),
        image_token_index=4,
    ),
}


def preset_config(name: str, num_semantic_tokens: int | None = None, **overrides) -> VisToGConfig:
    """The VisToGConfig of a named preset (VisToG off unless `num_semantic_tokens` is given)."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown shape {name!r}{hint}; known: {', '.join(PRESETS)}")
    return VisToGConfig(**PRESETS[name], num_semantic_tokens=num_semantic_tokens, **overrides)


__all__ = ["PRESETS", "preset_config"]
