"""Qwen2.5-VL (`model_type: qwen2_5_vl`, transformers' Qwen2_5_VLForConditionalGeneration).

Glossary: 28 px = patch (14) x merge (2); a merged unit: 2 x 2 patches, one LLM token (PatchMerger); grid (h, w): the
image's patches after resizing; F frames of a video, two per temporal patch.

The processor resizes an image to multiples of 28 px within its min / max pixels (transformers' `smart_resize`) and
gives one token per merged unit: a 448 x 448 image gives 256 tokens, a 1344 x 1344 one 2,304. A budget is a
percentage (1..100) of the image's own count, since that count depends on the image size; at least one token is
kept. A video goes to the processor as a video: (F / 2) x (H / 28) x (W / 28) tokens, one run, frames sampled as
lmms-eval's qwen2_5_vl samples them (EVEN_FRAMES) and each resized into QWEN_VIDEO_PIXELS. Its ViT holds the
PatchMerger (`model.visual`): no projector stage of its own. Not trained here (VisToG wraps the LLaVA families).

    family = family_for(config)
    family.kept_tokens(25, 256)                      # 64: 25 % of the image's own 256
    family.image_geometry(config, 448, 448)          # ImageGeometry(tokens=256, views=1, grid=(32, 32))
"""

from __future__ import annotations

from .base import EVEN_FRAMES, PERCENT_OF_OWN, ImageGeometry, ModelFamily

QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 3136, 12845056  # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json
# Pixels per Qwen2.5-VL video frame, as lmms-eval 0.7.3's qwen2_5_vl sizes frames: its defaults min_pixels = 256 x 28 x
# 28 and max_pixels = 1605632 go to qwen_vl_utils 0.0.14 `fetch_video`, which also caps a frame at VIDEO_MAX_TOKEN_NUM
# x 28 x 28 = 768 x 28 x 28, and bounds the whole video at 128000 x 28 x 28 x 0.9 px over its frame pairs (binding
# beyond ~300 frames; transformers' Qwen2VLVideoProcessor applies the same bound with `cap_pixels_per_frame=True`).
# The hub checkpoint publishes no video limits, and transformers' video processor then takes the image limits (up to
# 12,845,056 px: 16,384 tokens per frame pair).
QWEN_VIDEO_PIXELS = (256 * 28 * 28, min(1605632, 768 * 28 * 28))


class Qwen25VLFamily(ModelFamily):
    model_type = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    label = "qwen2_5_vl"
    budget_rule = PERCENT_OF_OWN
    encoder = "Qwen2.5-VL ViT (window attention, 2D RoPE) + PatchMerger (no CLS)"
    video_frames = EVEN_FRAMES
    video_pixels = QWEN_VIDEO_PIXELS
    stage_paths = {**ModelFamily.stage_paths, "vision": ("model", "visual")}

    def stock_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def full_budget(self, config) -> int:
        return 100  # percent of each image's own count

    def image_geometry(
        self, config, height: int, width: int, *, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS
    ) -> ImageGeometry:
        """Resized by transformers' smart_resize (image_processing_qwen2_vl.py), one token per merged unit."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        vision = config.vision_config
        patch, merge = vision.patch_size, vision.spatial_merge_size
        resized_h, resized_w = smart_resize(
            height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels
        )
        grid = (resized_h // patch, resized_w // patch)
        return ImageGeometry(grid[0] * grid[1] // (merge * merge), 1, grid)

    def vision_sizes(self, config) -> dict:
        """The ViT on one image (a 2 x 14 x 14 Conv3d: the image is two frames), window attention but in
        `fullatt_block_indexes`, windows of `window_size` px."""
        vision = config.vision_config
        merge = vision.spatial_merge_size
        return dict(
            channels=vision.in_channels,
            patch_size=vision.patch_size,
            temporal_patch=vision.temporal_patch_size,
            vision_width=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
            vision_mlp_matrices=3,
            vision_layers=vision.depth,
            cls_token=False,
            patches_per_view=0,
            full_attention_layers=tuple(vision.fullatt_block_indexes),
            window_units=vision.window_size // merge // vision.patch_size,
            merge=merge,
        )


__all__ = ["QWEN_MAX_PIXELS", "QWEN_MIN_PIXELS", "QWEN_VIDEO_PIXELS", "Qwen25VLFamily"]
