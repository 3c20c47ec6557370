"""LLaVA-OneVision (`model_type: llava_onevision`, transformers' LlavaOnevisionForConditionalGeneration) and VisToG
per view on it (`vistog_llava_onevision`).

Glossary: P = 729 patches of a SigLIP-384 view (27 x 27, no CLS); anyres_max_9: tiles on grids up to 2304 px whose
features are pooled back to at most 9 views' worth; F frames of a video.

A video goes to the processor as a video (`videos=`, the template's `<video>` placeholder): F x 196 tokens (each
frame's 27 x 27 grid pooled 2 x 2 to 14 x 14) + 1 newline, one run; frames sampled as lmms-eval's llava_hf samples
them (UNIFORM_FRAMES). A VisToG model takes a video's frames as images (its views).

    family = family_for(config)
    family.video_frame_indices(total=100, max_frames=8)   # np.linspace(0, 99, 8, dtype=int)
"""

from __future__ import annotations

import math

from ..geometry import num_patches
from .anyres import AnyresFamily
from .base import UNIFORM_FRAMES


class LlavaOnevisionFamily(AnyresFamily):
    model_type = "llava_onevision"
    model_types = ("llava_onevision", "vistog_llava_onevision")
    label = "llava_onevision"
    class_name = "LlavaOnevisionForConditionalGeneration"
    encoder = "SigLIP-so400m/14-384, anyres_max_9 tiles (no CLS)"
    video_frames = UNIFORM_FRAMES

    def grid_tokens(self, config, rows: int, cols: int) -> int:
        """After anyres_max_9's pooling: features pooled back to ~9 views' worth when the grid holds over 1.1x that
        (processing_llava_onevision.py `_get_unpadded_features`)."""
        most = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (most * num_patches(config.vision_config)))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
        return super().grid_tokens(config, rows, cols)


__all__ = ["LlavaOnevisionFamily"]
