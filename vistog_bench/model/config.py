"""VisToGConfig: a LlavaConfig with the VisToG settings.

Defaults follow LLaVA-1.5 (vision feature layer -2, CLS dropped) and the paper's 64-token setting
(arXiv 2411.17773). `num_semantic_tokens=None` switches VisToG off: the model is then stock LLaVA-1.5.
"""

from __future__ import annotations

from transformers import AutoConfig, LlavaConfig

from ..errors import UsageError


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
            num_patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
            if not isinstance(self.num_semantic_tokens, int) or not 0 < self.num_semantic_tokens <= num_patches:
                raise UsageError(
                    f"num_semantic_tokens must be an integer in 1..{num_patches} (the patch count) or None, "
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
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens one image gives the LLM: N with VisToG on, P with it off."""
        return self.num_semantic_tokens if self.num_semantic_tokens is not None else self.num_patches


AutoConfig.register("vistog", VisToGConfig)

__all__ = ["VisToGConfig"]
