"""VisToG on transformers' LLaVA: `VisToGForConditionalGeneration`.

Glossary: B batch (images or video frames), P patches, N semantic tokens (= the visual-token budget), Dv vision width,
D LLM width.

    pixel_values [B, 3, H, W]
      -> VisToGVisionTower        patches [B, P, Dv] (exactly CLIP's), semantic [B, N, Dv]     (vision.py)
      -> VisToGGroupingLayer      groups  [B, N, Dv]                                           (grouping.py)
      -> LLaVA projector          tokens  [B, N, D]   (the checkpoint's own projector weights)
      -> LLaVA LLM                each image placeholder expanded to N tokens in the prompt

With `num_semantic_tokens=None` the grouping is skipped and the LLM receives all P patch tokens: stock LLaVA-1.5.
A training-free reducer (vistog_bench.reducers) may be attached with `set_token_reducer`; it maps vision states to
its budget of tokens before the projector.

What the paper leaves open (arXiv 2411.17773; only its abstract and figures are public in detail). Known: semantic
tokens concatenated after CLIP's linear (patch) projection, isolated attention inside the frozen encoder, one
Gumbel-softmax grouping layer, LLaVA-1.5's two-stage training, >= 64 tokens in the paper's settings. Inferred here:
  1. Semantic tokens: their own parameters, initialised like CLIP's class embedding, no position embedding, joined
     *after* the position embeddings and *before* CLIP's pre-layernorm (so they are normalised like every token).
  2. Isolated attention in every encoder layer up to LLaVA's feature layer (-2); semantic tokens also attend to each
     other. The feature layer is LLaVA's, CLS dropped.
  3. Grouping layer after the feature layer, in the vision width Dv, so LLaVA's projector is reused unchanged:
     GroupViT-style assignment (see grouping.py) with an exact mean of assigned patches, residual on the semantic
     token, then a residual MLP (ratio 4). Gumbel temperature 1.0; hard straight-through when training.
  4. Evaluation uses the argmax assignment (no noise), so results are deterministic.
  5. Tokens are passed to the LLM in semantic-token order (the order has no spatial meaning).
  6. Training (see vistog_bench.demo.train): stage 1 trains semantic tokens + grouping + projector with vision and LLM
     frozen; stage 2 also trains the LLM; the vision encoder stays frozen throughout.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn
from transformers import AutoModel, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaModel, LlavaMultiModalProjector, LlavaPreTrainedModel

from ..errors import UsageError
from .config import VisToGConfig
from .grouping import VisToGGroupingLayer
from .vision import VisionStates, VisToGVisionTower, init_semantic_tokens


class TokenReducer(Protocol):
    """A training-free reducer: vision states of B images -> [B, budget, Dv] tokens (see vistog_bench.reducers)."""

    budget: int
    needs_cls_attention: bool

    def __call__(self, states: VisionStates) -> torch.Tensor: ...


def vistog_config(config, num_semantic_tokens: int | None, **vistog_settings) -> VisToGConfig:
    """A LLaVA (or VisToG) config as a VisToGConfig with `num_semantic_tokens` (None: VisToG off, stock LLaVA)."""
    own_keys = set(VisToGConfig.__annotations__) | {"model_type", "architectures", "transformers_version"}
    data = {k: v for k, v in config.to_dict().items() if k not in own_keys}
    return VisToGConfig(**data, num_semantic_tokens=num_semantic_tokens, **vistog_settings)


class VisToGPreTrainedModel(LlavaPreTrainedModel):
    config: VisToGConfig
    config_class = VisToGConfig

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VisToGGroupingLayer):
            with torch.no_grad():
                module.log_logit_scale.fill_(math.log(module.logit_scale_init))
        if isinstance(module, VisToGVisionTower) and module.semantic_tokens is not None:
            with torch.no_grad():
                module.semantic_tokens.copy_(init_semantic_tokens(*module.semantic_tokens.shape[1:]))


class VisToGModel(VisToGPreTrainedModel, LlavaModel):
    """LlavaModel whose vision path is `vision tower -> grouping (or reducer) -> projector`."""

    def __init__(self, config: VisToGConfig):
        VisToGPreTrainedModel.__init__(self, config)
        num_semantic = config.num_semantic_tokens or 0
        self.vision_tower = VisToGVisionTower(
            config.vision_config, num_semantic_tokens=num_semantic, isolated_attention=config.isolated_attention
        )
        self.grouping = (
            VisToGGroupingLayer(
                config.vision_config.hidden_size,
                mlp_ratio=config.grouping_mlp_ratio,
                tau=config.gumbel_tau,
                hard=config.grouping_hard,
                eps=config.vision_config.layer_norm_eps,
                logit_scale=config.grouping_logit_scale,
            )
            if num_semantic
            else None
        )
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.token_reducer: TokenReducer | None = None
        self.post_init()

    @property
    def num_visual_tokens(self) -> int:
        """Tokens one image gives the LLM: N (VisToG), the reducer's budget, or P (stock)."""
        if self.token_reducer is not None:
            return self.token_reducer.budget
        return self.config.num_visual_tokens

    def vision_states(self, pixel_values: torch.Tensor, with_cls_attention: bool = False) -> VisionStates:
        return self.vision_tower(
            pixel_values, feature_layer=self.config.vision_feature_layer, with_cls_attention=with_cls_attention
        )

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the LLM receives: [B, N, D]."""
        reducer = self.token_reducer
        states = self.vision_states(
            pixel_values, with_cls_attention=reducer is not None and reducer.needs_cls_attention
        )
        if self.grouping is not None:
            features = self.grouping(states.semantic_states, states.patch_states)  # [B, N, Dv]
        elif reducer is not None:
            features = reducer(states)  # [B, budget, Dv]
        else:
            features = states.patch_states  # [B, P, Dv]
        return self.multi_modal_projector(features)  # [B, N, D]

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        tokens = self.visual_tokens(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=list(tokens))


class VisToGForConditionalGeneration(VisToGPreTrainedModel, LlavaForConditionalGeneration):
    """LLaVA-1.5 with VisToG's visual token grouping; `generate`, `save_pretrained`, `from_pretrained` as stock."""

    def __init__(self, config: VisToGConfig):
        VisToGPreTrainedModel.__init__(self, config)
        self.model = VisToGModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # -- contracts (DESIGN.md) -------------------------------------------------------------------------------------
    def vision_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feature-layer states: patches [B, P, Dv] (CLS dropped, exactly CLIP's) and semantic [B, N, Dv] (or None)."""
        states = self.model.vision_states(pixel_values)
        return states.patch_states, states.semantic_states

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the LLM receives: [B, N, D] with N the visual-token budget."""
        return self.model.visual_tokens(pixel_values)

    @property
    def num_visual_tokens(self) -> int:
        return self.model.num_visual_tokens

    def set_token_reducer(self, reducer: TokenReducer | None) -> None:
        """Attach (or detach with None) a training-free reducer; only on a model with VisToG off."""
        if reducer is not None and self.model.grouping is not None:
            raise UsageError("a training-free reducer runs on stock LLaVA (VisToG off), not on a VisToG checkpoint")
        self.model.token_reducer = reducer

    @classmethod
    def from_llava(
        cls, llava: LlavaForConditionalGeneration, num_semantic_tokens: int | None = 64, **vistog_settings
    ) -> VisToGForConditionalGeneration:
        """Wrap a stock LLaVA model: its modules are reused (no copy); VisToG's own parts are freshly initialised on
        the LLaVA model's device and dtype. `num_semantic_tokens=None` gives stock LLaVA behind this class."""
        config = vistog_config(llava.config, num_semantic_tokens, **vistog_settings)
        config._attn_implementation = llava.config._attn_implementation
        with torch.device("meta"):
            model = cls(config)
        source = llava.model
        for name, child in source.vision_tower.named_children():
            setattr(model.model.vision_tower, name, child)
        model.model.multi_modal_projector = source.multi_modal_projector
        model.model.language_model = source.language_model
        model.lm_head = llava.lm_head
        parameter = next(llava.parameters())
        if num_semantic_tokens is not None:
            width = config.vision_config.hidden_size
            model.model.vision_tower.semantic_tokens = nn.Parameter(
                init_semantic_tokens(num_semantic_tokens, width, device=parameter.device, dtype=parameter.dtype)
            )
            grouping = model.model.grouping.to_empty(device=parameter.device).to(parameter.dtype)
            for module in grouping.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            model._init_weights(grouping)
        model.generation_config = llava.generation_config
        model.train(llava.training)
        leftover = [name for name, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
        assert not leftover, f"parameters left on the meta device: {leftover[:5]}"
        return model


__all__ = ["VisToGForConditionalGeneration", "VisToGModel", "VisToGPreTrainedModel", "TokenReducer", "vistog_config"]
