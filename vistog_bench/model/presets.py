"""Architecture presets: named configs without weights, for tests, `--shape NAME` and analytic costs.

`llava-1.5-7b` / `-13b` follow the released `llava-hf/llava-1.5-{7b,13b}-hf` configs (CLIP ViT-L/14-336 +
Vicuna-1.5); `tiny` keeps LLaVA-1.5's 336 px / 14 px geometry (576 patches, so every real budget exists) with widths
small enough for a CPU test.

Other families (`FAMILY_PRESETS`, `family_preset_config`): transformers' own configs of the 7B releases, values from
their hub `config.json`: `llava-next-7b` (llava-hf/llava-v1.6-mistral-7b-hf: CLIP ViT-L/14-336 + Mistral-7B, the
1.6 anyres grids), `llava-onevision-7b` (llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP-so400m/14-384 + Qwen2-7B,
anyres_max_9), `qwen2.5-vl-7b` (Qwen/Qwen2.5-VL-7B-Instruct: a 32-layer ViT with window attention, full attention in
layers 7 / 15 / 23 / 31, a 2 x 2 PatchMerger, Qwen2.5-7B).
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


FAMILY_PRESETS: dict[str, tuple[str, dict]] = {  # name -> (transformers config class, its arguments)
    "llava-next-7b": (
        "LlavaNextConfig",
        dict(
            vision_config=CLIP_VIT_L_336,
            text_config=dict(
                model_type="mistral",
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=32064,
                max_position_embeddings=32768,
                rms_norm_eps=1e-5,
                rope_theta=1000000.0,
            ),
            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            image_token_index=32000,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        ),
    ),
    "llava-onevision-7b": (
        "LlavaOnevisionConfig",
        dict(
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=1152,
                intermediate_size=4304,
                num_hidden_layers=26,
                num_attention_heads=16,
                image_size=384,
                patch_size=14,
                vision_use_head=False,
            ),
            text_config=dict(
                model_type="qwen2",
                hidden_size=3584,
                intermediate_size=18944,
                num_hidden_layers=28,
                num_attention_heads=28,
                num_key_value_heads=4,
                vocab_size=152128,
                max_position_embeddings=32768,
                rope_theta=1000000.0,
            ),
            image_grid_pinpoints=[[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
            image_token_index=151646,
            video_token_index=151647,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        ),
    ),
    "qwen2.5-vl-7b": (
        "Qwen2_5_VLConfig",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=128000,
            rope_theta=1000000.0,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
            vision_config=dict(
                depth=32,
                hidden_size=1280,
                intermediate_size=3420,
                num_heads=16,
                out_hidden_size=3584,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31],
            ),
            image_token_id=151655,
            video_token_id=151656,
        ),
    ),
}


def family_preset_config(name: str):
    """transformers' config of a named 7B release of another family (no weights)."""
    import transformers

    if name not in FAMILY_PRESETS:
        known = [*PRESETS, *FAMILY_PRESETS]
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown shape {name!r}{hint}; known: {', '.join(known)}")
    class_name, arguments = FAMILY_PRESETS[name]
    return getattr(transformers, class_name)(**arguments)


def preset_config(name: str, num_semantic_tokens: int | None = None, **overrides) -> VisToGConfig:
    """The VisToGConfig of a named preset (VisToG off unless `num_semantic_tokens` is given)."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown shape {name!r}{hint}; known: {', '.join(PRESETS)}")
    return VisToGConfig(**PRESETS[name], num_semantic_tokens=num_semantic_tokens, **overrides)


__all__ = ["FAMILY_PRESETS", "PRESETS", "family_preset_config", "preset_config"]
