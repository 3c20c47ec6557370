"""CLIP vision tower with VisToG's semantic tokens and isolated attention.

Glossary: B batch, P patches, I = 1 + P image tokens (CLS + patches), N semantic tokens, S = I + N,
Dv vision width, h heads, dh head width.

After CLIP's own embedding (patch convolution + CLS + position embeddings, exactly as stock), N learnable semantic
tokens are concatenated. They are initialised like CLIP's class embedding (normal, std Dv^-0.5) and get **no**
position embedding: they have no place in the image and read it through attention only. The stock encoder layers
then run with *isolated attention*:

    image queries    (CLS + patches) attend to image keys only        -> patch features are exactly stock CLIP's
    semantic queries                 attend to image and semantic keys

Implemented as two unmasked `scaled_dot_product_attention` calls on one shared Q/K/V projection (no dense S x S mask),
so fast SDPA kernels stay usable. Layers after the feature layer are not run: LLaVA never reads them. One layer
forward (`encoder_layer_forward`) serves every path; the attention function is looked up by name
(ATTENTION_FUNCTIONS: "sdpa" stock, "isolated"), as transformers' layers look up theirs.

Optionally (VisToG off only) a `TokenMerge` merges tokens inside each layer, between attention and MLP, as ToMe does
(Bolya et al., ICLR 2023; vistog_bench.reducers.tome): the tower tracks how many patches each token stands for (its
size s) and adds log s to the attention logits (proportional attention). The stock path is untouched by this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from ..errors import UsageError


@dataclass
class VisionStates:
    """Feature-layer states of one forward pass of the vision tower."""

    patch_states: torch.Tensor  # [B, P, Dv], CLS dropped
    cls_state: torch.Tensor  # [B, Dv]
    semantic_states: torch.Tensor | None = None  # [B, N, Dv]; None with VisToG off
    cls_attention: torch.Tensor | None = None  # [B, P] CLS -> patch attention at the feature layer, head mean
    patch_keys: torch.Tensor | None = None  # [B, P, Dv] attention keys of the patches at the feature layer


class TokenMerge(Protocol):
    """Merges tokens inside the encoder, between a layer's attention and its MLP (ToMe).

    Called with the layer's index, its post-attention states [B, S, Dv], its attention keys [B, h, S, dh] and the
    token sizes [B, S] (patches each token stands for); returns merged states [B, S', Dv] and sizes [B, S'].
    The CLS token must stay first.
    """

    def __call__(
        self, layer_index: int, hidden_states: torch.Tensor, key: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def sdpa_attention(
    module: CLIPAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Every query sees every key (stock CLIP). query, key, value: [B, h, S, dh]; attention_mask: an additive bias
    broadcast to [B, h, S, S] or None. Returns ([B, h, S, dh], None): SDPA gives no weights."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling), None


def isolated_attention(
    module: CLIPAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    num_image_tokens: int,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Image queries see image keys only; the queries after them (semantic tokens) see every key.

    query, key, value: [B, h, S, dh] with the I image tokens first. Returns ([B, h, S, dh], None).
    """
    if attention_mask is not None:
        raise ValueError("isolated attention takes no attention mask")
    image = slice(0, num_image_tokens)
    # [B, h, I, dh] <- softmax([B, h, I, dh] @ [B, h, dh, I]) @ [B, h, I, dh]
    image_out = F.scaled_dot_product_attention(query[:, :, image], key[:, :, image], value[:, :, image], scale=scaling)
    if query.shape[2] == num_image_tokens:
        return image_out, None
    # [B, h, N, dh] <- softmax([B, h, N, dh] @ [B, h, dh, S]) @ [B, h, S, dh]
    semantic_out = F.scaled_dot_product_attention(query[:, :, num_image_tokens:], key, value, scale=scaling)
    return torch.cat([image_out, semantic_out], dim=2), None


# Attention functions by name, looked up per layer as transformers' modules look up theirs
# (`eager_attention_forward` / ALL_ATTENTION_FUNCTIONS): (module, query, key, value, mask, scaling) -> (out, weights).
ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "isolated": isolated_attention}


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, S, h dh] (heads concatenated, as a projection returns them) -> [B, h, S, dh]."""
    batch, length, _ = x.shape
    return x.view(batch, length, -1, head_dim).transpose(1, 2)  # [B, h, S, dh]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, _, length, _ = x.shape
    return x.transpose(1, 2).reshape(batch, length, -1)  # [B, S, Dv]


def cls_attention(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Softmax attention of the CLS query over the image keys, mean over heads, CLS column dropped: [B, P]."""
    # [B, h, 1, I] <- [B, h, 1, dh] @ [B, h, dh, I]
    weights = torch.softmax((query[:, :, :1] @ key.transpose(-1, -2)).float() * scaling, dim=-1)
    return weights[:, :, 0, 1:].mean(dim=1)


def _query_key_value(attn: CLIPAttention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CLIP's shared Q/K/V projections of [B, S, Dv] states, split into heads: three [B, h, S, dh]."""
    return tuple(
        split_heads(projection(hidden_states), attn.head_dim) for projection in (attn.q_proj, attn.k_proj, attn.v_proj)
    )


@dataclass
class LayerOutput:
    hidden_states: torch.Tensor  # [B, S', Dv]
    query: torch.Tensor  # [B, h, S, dh] this layer's attention queries (before any merge)
    key: torch.Tensor  # [B, h, S, dh]
    sizes: torch.Tensor | None = None  # [B, S'] patches each token stands for (token merging only)


def encoder_layer_forward(
    layer: CLIPEncoderLayer,
    hidden_states: torch.Tensor,
    attention: str,
    *,
    num_image_tokens: int,
    sizes: torch.Tensor | None = None,
    merge: TokenMerge | None = None,
    layer_index: int = 0,
) -> LayerOutput:
    """One stock CLIP encoder layer with the attention function named `attention` (ATTENTION_FUNCTIONS), serving the
    stock, isolated and merging paths. With `sizes` [B, S] (ToMe) attention is proportional, softmax(q k^T * scale
    + log s): a key standing for s patches counts s times; `merge` then runs between attention and MLP.
    hidden_states [B, S, Dv]."""
    attn: CLIPAttention = layer.self_attn
    residual = hidden_states
    query, key, value = _query_key_value(attn, layer.layer_norm1(hidden_states))  # [B, h, S, dh] each
    size_bias = sizes.log().to(query.dtype)[:, None, None, :] if sizes is not None else None  # [B, 1, 1, S]
    attended, _ = ATTENTION_FUNCTIONS[attention](
        attn, query, key, value, size_bias, attn.scale, num_image_tokens=num_image_tokens
    )
    hidden_states = residual + attn.out_proj(_merge_heads(attended))
    if merge is not None:
        hidden_states, sizes = merge(layer_index, hidden_states, key, sizes)

    residual = hidden_states
    hidden_states = residual + layer.mlp(layer.layer_norm2(hidden_states))
    return LayerOutput(hidden_states, query, key, sizes)


def init_semantic_tokens(num_tokens: int, width: int, *, device=None, dtype=None) -> torch.Tensor:
    """N learnable tokens drawn like CLIP's class embedding: normal(0, Dv^-0.5). Shape [1, N, Dv]."""
    return torch.randn(1, num_tokens, width, device=device, dtype=dtype) * width**-0.5


def feature_layers_run(feature_layer: int, num_layers: int) -> int:
    """Encoder layers that run up to `vision_feature_layer`: hidden_states[k] is the output of k layers (0: the
    embeddings), so feature layer -2 of 24 layers runs 23; one that runs no layer, or more than there are, is
    refused."""
    count = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 < count <= num_layers:
        raise UsageError(f"vision_feature_layer {feature_layer} is outside a {num_layers}-layer encoder")
    return count


class VisToGVisionTower(CLIPVisionModel):
    """Stock CLIPVisionModel weights plus `semantic_tokens` [1, N, Dv]; forward returns feature-layer `VisionStates`.

    With `num_semantic_tokens=0` it computes exactly stock CLIP's feature-layer states (and stops there).
    `token_merge` (set by vistog_bench.reducers, VisToG off only) merges tokens inside the layers: the feature layer
    then returns fewer patch tokens.
    """

    def __init__(self, config: CLIPVisionConfig, num_semantic_tokens: int = 0, isolated_attention: bool = True):
        super().__init__(config)
        self.isolated_attention = isolated_attention
        if num_semantic_tokens:
            self.semantic_tokens = nn.Parameter(init_semantic_tokens(num_semantic_tokens, config.hidden_size))
        else:
            self.semantic_tokens = None
        self.token_merge: TokenMerge | None = None

    @property
    def num_patches(self) -> int:
        return self.embeddings.num_patches

    def layers_to_run(self, feature_layer: int) -> int:
        return feature_layers_run(feature_layer, len(self.encoder.layers))

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (self.config.num_channels, size, size):
            raise UsageError(
                f"pixel_values must be [batch, {self.config.num_channels}, {size}, {size}] for this vision tower, "
                f"got {list(pixel_values.shape)}; resize images with the checkpoint's image processor"
            )

    def forward(
        self, pixel_values: torch.Tensor, feature_layer: int = -2, with_cls_attention: bool = False
    ) -> VisionStates:
        self.check_pixel_values(pixel_values)
        hidden_states = self.embeddings(pixel_values)  # [B, I, Dv], CLS + patches + position embeddings
        num_image_tokens = hidden_states.shape[1]
        if self.semantic_tokens is not None:
            semantic = self.semantic_tokens.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
            hidden_states = torch.cat([hidden_states, semantic], dim=1)  # [B, S, Dv]
        hidden_states = self.pre_layrnorm(hidden_states)

        layers = self.encoder.layers[: self.layers_to_run(feature_layer)]
        merge = self.token_merge
        if merge is not None and (self.semantic_tokens is not None or with_cls_attention):
            raise UsageError("token merging runs on the stock tower only: VisToG off and no CLS attention")
        sizes = hidden_states.new_ones(hidden_states.shape[:2]) if merge is not None else None  # [B, I]
        attention = "isolated" if self.semantic_tokens is not None and self.isolated_attention else "sdpa"
        for index, layer in enumerate(layers):
            out = encoder_layer_forward(
                layer,
                hidden_states,
                attention,
                num_image_tokens=num_image_tokens,
                sizes=sizes,
                merge=merge,
                layer_index=index,
            )
            hidden_states, sizes = out.hidden_states, out.sizes
        if merge is not None:
            return VisionStates(patch_states=hidden_states[:, 1:], cls_state=hidden_states[:, 0])
        query, key = out.query, out.key

        states = VisionStates(
            patch_states=hidden_states[:, 1:num_image_tokens],
            cls_state=hidden_states[:, 0],
            semantic_states=hidden_states[:, num_image_tokens:] if self.semantic_tokens is not None else None,
        )
        if with_cls_attention:
            image_key = key[:, :, :num_image_tokens]  # [B, h, I, dh]
            states.cls_attention = cls_attention(query, image_key, self.encoder.layers[0].self_attn.scale)
            states.patch_keys = _merge_heads(image_key)[:, 1:]
        return states


__all__ = [
    "VisionStates",
    "VisToGVisionTower",
    "TokenMerge",
    "ATTENTION_FUNCTIONS",
    "encoder_layer_forward",
    "cls_attention",
    "feature_layers_run",
    "split_heads",
    "isolated_attention",
    "sdpa_attention",
    "init_semantic_tokens",
]
