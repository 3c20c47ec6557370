"""LLaVA-1.5 (`model_type: llava`, as llava-hf publishes it) and VisToG on it (`model_type: vistog`, modeling.py).

Glossary: P patches of the 336 px CLIP view (576), N semantic tokens, budget: visual tokens per image (1..P).

Every image gives the LLM a fixed count, the budget: each `<image>` placeholder of a prompt expands to
`tokens_per_placeholder` (N with VisToG, P stock, a reducer's own count: FastV's P, pruned inside the LLM), and a
video is its frames, one placeholder each. A stock checkpoint loads as VisToG off (`VisToGForConditionalGeneration`
with `num_semantic_tokens=None`: stock behaviour), so the reducers (vistog_bench.reducers) hook one class.

    family = family_for(config)           # LlavaFamily for llava and vistog configs
    family.full_budget(config)            # 576
    family.apply_method(model, "tome", 64)
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import UsageError
from ..geometry import num_patches
from .base import LLAVA_STAGES, ImageGeometry, ModelBatch, ModelFamily, VisualTokenCounts, check_semantic_tokens


class LlavaFamily(ModelFamily):
    model_type = "llava"
    model_types = ("llava", "vistog")
    label = "LLaVA-1.5"
    encoder = "CLIP ViT-L/14-336 (feature layer -2, CLS dropped)"
    hook_flops = True
    controlled_profiling = True
    method_entry = "vistog_bench.reducers:apply_method"
    required_stages = frozenset({"vision", "projector", "llm", "lm_head"})
    budget_unit = "visual tokens (the patch count)"
    full_budget_name = "patch count"

    def stock_class(self):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def load(self, path, config, **load_kwargs):
        """A VisToG checkpoint as saved; a stock one as VisToG off (stock behaviour behind VisToG's class)."""
        from ..loading import load_pretrained
        from ..modeling import VisToGForConditionalGeneration

        if config.model_type == "vistog":
            return load_pretrained(VisToGForConditionalGeneration, path, **load_kwargs)
        stock = load_pretrained(self.stock_class(), path, **load_kwargs)
        return VisToGForConditionalGeneration.from_llava(stock, num_semantic_tokens=None)

    def num_semantic_tokens(self, config) -> int | None:
        return config.num_semantic_tokens if config.model_type == "vistog" else None

    def check_checkpoint(self, path) -> None:
        """A VisToG checkpoint's config.json names its N: a missing key would load with VisToGConfig's default (64)
        and serve a model the weights do not describe. `null` is VisToG off (stock LLaVA-1.5 behind the class)."""
        saved = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        if saved.get("model_type") == "vistog" and "num_semantic_tokens" not in saved:
            raise UsageError(
                f"{path}: a VisToG checkpoint (model_type vistog) whose config.json has no num_semantic_tokens; "
                "it must say its N (an integer >= 1, or null for VisToG off)"
            )

    def full_budget(self, config) -> int:
        return num_patches(config.vision_config)

    def apply_method(self, model, method: str, budget: int | None, seed: int = 0) -> int:
        """None: the checkpoint's own count (N with VisToG, P stock)."""
        if budget is None:
            budget = model.config.num_semantic_tokens or model.config.num_patches
        super().apply_method(model, method, budget, seed=seed)
        return budget

    def tokens_per_placeholder(self, model) -> int:
        """The model's count per image (a stock LlavaForConditionalGeneration, as the llava stage trains: P)."""
        if hasattr(model, "num_visual_tokens"):
            return model.num_visual_tokens
        return num_patches(model.config.vision_config)  # LLaVA's "default" strategy: every patch, CLS dropped

    def native_video(self, model) -> bool:
        return False

    def build_inputs(self, model, processor, prompts, images, videos=(), tokens_per_placeholder=0) -> ModelBatch:
        from ..processing import build_inputs

        return ModelBatch(build_inputs(processor, prompts, images, tokens_per_placeholder))

    def visual_token_counts(self, model, batch, budget, images_per_sample) -> VisualTokenCounts:
        """Every image (a video's frames too) gives the LLM the budget."""
        return VisualTokenCounts(sum(images_per_sample) * budget)

    def image_geometry(self, config, height: int, width: int) -> ImageGeometry:
        return ImageGeometry(num_patches(config.vision_config), 1, None)  # resized to one 336 px view

    def training_model(self, stage, path, config, *, has_weights, num_semantic_tokens, dtype, seed):
        """The llava stages train a stock LLaVA checkpoint (from its config alone when it has no weights)."""
        if stage not in LLAVA_STAGES:
            return super().training_model(
                stage,
                path,
                config,
                has_weights=has_weights,
                num_semantic_tokens=num_semantic_tokens,
                dtype=dtype,
                seed=seed,
            )
        import torch

        from ..loading import load_pretrained

        if config.model_type != "llava":
            raise UsageError(f"stage {stage} trains a LLaVA checkpoint; {path} holds a {config.model_type!r} model")
        if has_weights:
            return load_pretrained(self.stock_class(), path, dtype=dtype)
        torch.manual_seed(seed)
        return self.stock_class()(config).to(dtype)

    def vistog_training_model(self, stage, path, config, num_semantic_tokens, dtype, seed):
        import torch

        from ..loading import load_pretrained
        from ..modeling import VisToGForConditionalGeneration

        if config.model_type == "llava":
            if num_semantic_tokens is None:
                raise UsageError(f"{path} is a LLaVA checkpoint: give --num-semantic-tokens N for VisToG")
            torch.manual_seed(seed)
            stock = load_pretrained(self.stock_class(), path, dtype=dtype)
            return VisToGForConditionalGeneration.from_llava(stock, num_semantic_tokens=num_semantic_tokens)
        model = load_pretrained(VisToGForConditionalGeneration, path, dtype=dtype)
        have = model.config.num_semantic_tokens
        if have is None:
            raise UsageError(f"{path} is a VisToG checkpoint with VisToG off; start from a LLaVA checkpoint")
        check_semantic_tokens(path, have, num_semantic_tokens)
        return model

    def vistog_parts(self, model) -> list:
        return [model.model.grouping, model.model.vision_tower.semantic_tokens]


__all__ = ["LlavaFamily"]
