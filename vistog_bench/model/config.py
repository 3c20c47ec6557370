"""VisToG's configs: `VisToGConfig` (a LlavaConfig with the VisToG settings) and the per-view VisToG on LLaVA-NeXT
and LLaVA-OneVision (`VisToGLlavaNextConfig`, `VisToGLlavaOnevisionConfig`: the stock config plus the same settings).

Defaults follow LLaVA-1.5 (vision feature layer -2, CLS dropped) and the paper's 64-token setting
(arXiv 2411.17773). `num_semantic_tokens=None` switches VisToG off: the model is then stock LLaVA-1.5. The per-view
configs always have an N (VisToG off there is the stock checkpoint itself). All three are registered with
transformers' AutoConfig, so `from_pretrained` reads them with `trust_remote_code=False`.

    VisToGConfig(vision_config=..., text_config=..., num_semantic_tokens=64)
    VisToGLlavaNextConfig(**llava_next_config.to_dict(), num_semantic_tokens=16)   # model_type vistog_llava_next
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig

from ..errors import UsageError
from .geometry import num_patches


class VisToGConfig(LlavaConfig):
    r"""
    num_semantic_tokens (`int` or `None`, defaults to 64):
        N, the number of learnable semantic tokens and hence of visual tokens one image gives the LLM.
        `None` turns VisToG off (no semantic tokens, no grouping): stock LLaVA-1.5 with one token per patch.
    gumbel_tau (`float`, defaults to 1.0):
        Temperature of the Gumbel-softmax used for the assignment while training (GroupViT uses 1.0).
    grouping_hard (`bool`, defaults to True):
        Straight-through hard one-hot assignment while training; `False` trains with the soft assignment.
        Evaluation is always the deterministic argmax.
    isolated_attention (`bool`, defaults to True):
        CLS and patch tokens attend only to CLS and patch tokens (so their features stay exactly CLIP's) and semantic
        tokens attend to everything. `False` lets every token attend to every token, semantic ones included, which
        changes the patch features: an ablation, not the paper's model.
    grouping_logit_scale (`float`, defaults to 10.0):
        Initial value of the grouping layer's learnt logit scale (multiplies q.k/sqrt(Dv) before the Gumbel noise).
    grouping_mlp_ratio (`float`, defaults to 4.0):
        Hidden width of the grouping layer's residual MLP, as a multiple of the vision width (ViT convention).
    """

    model_type = "vistog"

    num_semantic_tokens: int | None = 64
    gumbel_tau: float = 1.0
    grouping_hard: bool = True
    isolated_attention: bool = True
    grouping_mlp_ratio: float = 4.0
    grouping_logit_scale: float = 10.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_semantic_tokens is not None:
            count = self.num_patches
            if not isinstance(self.num_semantic_tokens, int) or not 0 < self.num_semantic_tokens <= count:
                raise UsageError(
                    f"num_semantic_tokens must be an integer in 1..{count} (the patch count) or None, "
                    f"got {self.num_semantic_tokens!r}"
                )
        if self.grouping_logit_scale <= 0:
            raise UsageError(f"grouping_logit_scale must be > 0, got {self.grouping_logit_scale}")
        if self.gumbel_tau <= 0:
            raise UsageError(f"gumbel_tau must be > 0, got {self.gumbel_tau}")
        if self.vision_feature_select_strategy != "default" or not isinstance(self.vision_feature_layer, int):
            raise UsageError(
                "VisToG groups one feature layer with CLS dropped: vision_feature_select_strategy must be 'default' "
                f"and vision_feature_layer an int, got {self.vision_feature_select_strategy!r}, "
                f"{self.vision_feature_layer!r}"
            )

    @property
    def num_patches(self) -> int:
        """P: patch tokens per image (576 for ViT-L/14 at 336 px)."""
        return num_patches(self.vision_config)

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens one image gives the LLM: N with VisToG on, P with it off."""
        return self.num_semantic_tokens if self.num_semantic_tokens is not None else self.num_patches


# What each per-view VisToG setting must be; the same rules read an earlier checkpoint's vistog_family.json
# (`modeling_views.legacy_settings`). A JSON `true` is no N and `"false"` no boolean, so the types are checked exactly.
VIEW_SETTING_RULES = {
    "num_semantic_tokens": ("must be an integer >= 1", lambda v: type(v) is int and v >= 1),
    "isolated_attention": ("must be true or false", lambda v: type(v) is bool),
    "grouping_mlp_ratio": ("must be a number > 0", lambda v: type(v) in (int, float) and v > 0),
    "gumbel_tau": ("must be a number > 0", lambda v: type(v) in (int, float) and v > 0),
    "grouping_logit_scale": ("must be a number > 0", lambda v: type(v) in (int, float) and v > 0),
}


def view_setting_problem(key: str, value) -> str | None:
    """Why `value` is no valid per-view VisToG setting `key`, None if it is."""
    if key not in VIEW_SETTING_RULES:
        return f"is not a per-view VisToG setting (known: {', '.join(VIEW_SETTING_RULES)})"
    rule, holds = VIEW_SETTING_RULES[key]
    return None if holds(value) else rule


@dataclass(repr=False, kw_only=True)
class VisToGViewSettings:
    """The VisToG settings of a per-view config (fields joined to the stock config's; see VisToGConfig for each)."""

    num_semantic_tokens: int = 64  # N per view
    isolated_attention: bool = True
    grouping_mlp_ratio: float = 4.0
    gumbel_tau: float = 1.0
    grouping_logit_scale: float = 10.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for key in VIEW_SETTING_RULES:
            problem = view_setting_problem(key, getattr(self, key))
            if problem:
                raise UsageError(f"{key} {problem}, got {getattr(self, key)!r}")
        if not isinstance(self.vision_feature_layer, int):
            raise UsageError("VisToG groups one feature layer; this checkpoint concatenates several")


class VisToGLlavaNextConfig(VisToGViewSettings, LlavaNextConfig):
    """LlavaNextConfig + VisToG per view (CLIP-336 views: the anyres base view and each tile)."""

    model_type = "vistog_llava_next"


class VisToGLlavaOnevisionConfig(VisToGViewSettings, LlavaOnevisionConfig):
    """LlavaOnevisionConfig + VisToG per view (SigLIP-384 views)."""

    model_type = "vistog_llava_onevision"


AutoConfig.register("vistog", VisToGConfig)
AutoConfig.register(VisToGLlavaNextConfig.model_type, VisToGLlavaNextConfig)
AutoConfig.register(VisToGLlavaOnevisionConfig.model_type, VisToGLlavaOnevisionConfig)

__all__ = [
    "VIEW_SETTING_RULES",
    "VisToGConfig",
    "VisToGLlavaNextConfig",
    "VisToGLlavaOnevisionConfig",
    "VisToGViewSettings",
    "view_setting_problem",
]
