"""What LLaVA-NeXT and LLaVA-OneVision share: anyres tiling, the per-image-total budget, VisToG per view.

Glossary: view, one encoder input (the base view: the image resized; a tile: one cell of the best pinpoint's grid);
side, patches along one side of a view; grid, the unpadded tiles' patches (rows x cols); newline, one token per
grid row the processor adds; N semantic tokens per view (VisToG).

An image gives the LLM its base view's patches, the best pinpoint's tile grid with the padding rows / columns of its
aspect ratio taken off, and one newline token per row of that grid (transformers' processing_llava_next.py
`_get_number_of_features` / `_get_unpadded_features`; OneVision's the same without CLS, plus anyres_max_9's
pooling): `image_geometry`. A budget is visual tokens per image, summed over its tiles; an image that gives fewer
keeps all of them; `none` keeps every token, recorded at the most one image can give (`most_image_tokens`).
VisToG (modeling_views.py) serves N per view: a VisToG checkpoint is one cell at its own N, whatever the budgets.

    family = family_for(llava_next_config)
    family.image_geometry(config, 672, 672)      # ImageGeometry(tokens=2928, views=5, grid=None)
    family.full_budget(config)                   # most_image_tokens(config)
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UsageError
from ..geometry import num_patches, patch_side
from ..modeling_views import LEGACY_SETTINGS_FILE, VIEWS_CLASSES, VisToGViews, load_legacy
from .base import PER_IMAGE_TOTAL, ImageGeometry, ModelBatch, ModelFamily, check_semantic_tokens


class AnyresFamily(ModelFamily):
    """LLaVA-NeXT / OneVision: transformers' class `class_name`, its VisToG per view in modeling_views.py."""

    budget_rule = PER_IMAGE_TOTAL
    vistog_per_view = True
    class_name = ""
    encoder_cls_token = False  # the encoder's sequence carries a CLS token (CLIP), dropped for the LLM

    def stock_class(self):
        import transformers

        return getattr(transformers, self.class_name)

    def views_class(self):
        """The VisToG-per-view class of this family (modeling_views.py)."""
        return VIEWS_CLASSES[self.model_type]

    def is_vistog(self, config) -> bool:
        return isinstance(config, self.views_class().config_class)

    def load(self, path, config, **load_kwargs):
        """A stock checkpoint as transformers' class; a VisToG one as saved, or written before the VisToG classes
        existed (vistog_family.json beside the stock files)."""
        from ..loading import load_pretrained

        if not self.is_vistog(config):
            return super().load(path, config, **load_kwargs)
        if (Path(path) / LEGACY_SETTINGS_FILE).is_file():
            return load_legacy(path, config, **load_kwargs)
        return load_pretrained(self.views_class(), path, **load_kwargs)

    def num_semantic_tokens(self, config) -> int | None:
        return config.num_semantic_tokens if self.is_vistog(config) else None

    def full_budget(self, config) -> int:
        return self.most_image_tokens(config)

    def none_budget(self, config) -> int | None:
        return None

    def native_video(self, model) -> bool:
        """A VisToG model takes a video's frames as images (its views)."""
        return self.video_frames is not None and not isinstance(model, VisToGViews)

    def build_inputs(self, model, processor, prompts, images, videos=(), tokens_per_placeholder=0) -> ModelBatch:
        if not isinstance(model, VisToGViews):
            return super().build_inputs(model, processor, prompts, images, videos, tokens_per_placeholder)
        inputs = model.inputs(processor, prompts, images)  # views x N placeholders per image
        unreduced = inputs.pop("visual_tokens_unreduced")
        return ModelBatch(inputs, unreduced)

    def view_tokens(self, model):
        return model.view_tokens if isinstance(model, VisToGViews) else None

    def vistog_training_model(self, stage, path, config, num_semantic_tokens, dtype, seed):
        """Fresh parts on the stock checkpoint (seeded after it loads), or the saved VisToG checkpoint."""
        import torch

        from ..loading import load_pretrained

        if self.is_vistog(config):
            model = self.load(path, config, dtype=dtype)
            check_semantic_tokens(path, model.num_semantic_tokens, num_semantic_tokens)
            return model
        if num_semantic_tokens is None:
            raise UsageError(f"{path} is a {self.model_type} checkpoint: give --num-semantic-tokens N for VisToG")
        stock = load_pretrained(self.stock_class(), path, dtype=dtype)
        torch.manual_seed(seed)
        return self.views_class().from_stock(stock, num_semantic_tokens)

    # -- geometry ------------------------------------------------------------------------------------------------------
    def base_tokens(self, config) -> int:
        """The base view's tokens at the LLM input."""
        return num_patches(config.vision_config)

    def grid_tokens(self, config, rows: int, cols: int) -> int:
        """Tokens of an unpadded tile grid of rows x cols patches: its features and one newline per row."""
        return rows * cols + rows

    def image_geometry(self, config, height: int, width: int) -> ImageGeometry:
        """An image of height x width px, as the processor counts its tokens; its views from transformers'
        `image_size_to_num_patches` (modeling_llava_next.py)."""
        from transformers.image_processing_utils import select_best_resolution
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        side, view_px = patch_side(config.vision_config), config.vision_config.image_size
        best_h, best_w = select_best_resolution([height, width], config.image_grid_pinpoints)
        rows, cols = side * (best_h // view_px), side * (best_w // view_px)  # the tile grid in patches
        if width / height > cols / rows:  # wider than the grid: padding rows above and below
            rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
        else:
            cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
        views = image_size_to_num_patches((height, width), config.image_grid_pinpoints, view_px)
        return ImageGeometry(self.base_tokens(config) + self.grid_tokens(config, rows, cols), int(views), None)

    def most_image_tokens(self, config) -> int:
        """The most visual tokens one image can give: the base view plus the largest count over every grid the
        unpadding can leave (a pinpoint's tile grid with some of its rows, or some of its columns, taken off),
        newline tokens included. NeXT: a pinpoint-sized image's whole grid (2,928 on the 1.6 grids). OneVision:
        below its largest grid, since anyres_max_9 pools large grids (an upper bound: not every grid is reached by
        some image)."""
        side, view_px = patch_side(config.vision_config), config.vision_config.image_size
        counts = []
        for h, w in config.image_grid_pinpoints:
            rows, cols = side * (h // view_px), side * (w // view_px)
            counts += [self.grid_tokens(config, r, cols) for r in range(1, rows + 1)]
            counts += [self.grid_tokens(config, rows, c) for c in range(1, cols + 1)]
        return self.base_tokens(config) + max(counts)

    def vision_sizes(self, config) -> dict:
        """CLIP / SigLIP on each view, every layer run (transformers runs the last layer too)."""
        vision = config.vision_config
        return dict(
            channels=vision.num_channels,
            patch_size=vision.patch_size,
            temporal_patch=1,
            vision_width=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
            vision_mlp_matrices=2,
            vision_layers=vision.num_hidden_layers,
            cls_token=self.encoder_cls_token,
            patches_per_view=num_patches(vision),
            full_attention_layers=(),
            window_units=0,
            merge=1,
        )


__all__ = ["AnyresFamily"]
