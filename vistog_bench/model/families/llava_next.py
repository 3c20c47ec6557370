"""LLaVA-NeXT (`model_type: llava_next`, transformers' LlavaNextForConditionalGeneration) and VisToG per view on it
(`vistog_llava_next`).

Glossary: P = 576 patches of a CLIP-336 view; anyres: a 336 px base view plus up to 4 tiles of the best
`image_grid_pinpoints`, one newline token per row of the unpadded grid (up to 2,928 tokens for 672 x 672).

CLIP keeps its CLS inside the encoder; the "default" strategy drops it for the LLM (the "full" one keeps it on the
base view). No video path in transformers' image model: a video's frames are images.

    family = family_for(config)                    # config.model_type llava_next or vistog_llava_next
    family.image_geometry(config, 672, 672).tokens  # 2928
"""

from __future__ import annotations

from ..geometry import num_patches
from .anyres import AnyresFamily


class LlavaNextFamily(AnyresFamily):
    model_type = "llava_next"
    model_types = ("llava_next", "vistog_llava_next")
    label = "llava_next"
    class_name = "LlavaNextForConditionalGeneration"
    encoder = "CLIP ViT-L/14-336, anyres tiles (feature layer -2, CLS dropped)"
    encoder_cls_token = True

    def base_tokens(self, config) -> int:
        """The base view's patches, CLS kept only by the `full` strategy."""
        return num_patches(config.vision_config) + int(config.vision_feature_select_strategy == "full")


__all__ = ["LlavaNextFamily"]
