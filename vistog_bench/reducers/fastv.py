"""`fastv`: visual-token pruning inside the LLM after layer K.

Chen, Zhao, Liu, Li, Lin, Zhou, Chang. "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
Acceleration for Large Vision-Language Models." ECCV 2024, arXiv 2403.06764. Reference implementation:
pkunlp-mllm/FastV, `src/transformers/src/transformers/models/llama/modeling_llama.py` (`use_fast_v`,
`fast_v_inplace`, `fast_v_agg_layer` = K, `fast_v_attention_rank` = tokens kept).

Glossary: B samples, T prompt length (every image expanded to P tokens), T' pruned length, P patches, K_img budget
(tokens kept per image), K the layer after which pruning happens (`fastv_layer`, default 2), L LLM layers, D LLM
width, h heads, dh head width.

As the reference (in-place variant): layers 0..K-1 run on the full prompt. The attention that the last prompt
token pays every token in layer K-1 (softmax, mean over heads) ranks the visual tokens; layers K..L-1 then run on
the text tokens plus the top K_img visual tokens of each image, in their original order and with their original
position ids (RoPE positions are not renumbered). Decoding reads the pruned KV cache in layers >= K and the full one
in layers < K.

How it is done here (hooks on the stock LLaMA, nothing forced to eager attention):
  * the last token's attention at layer K-1 is recomputed from that layer's own q / k projections (captured by
    forward hooks on `q_proj` / `k_proj`, so no projection is computed twice) and the rotary embedding: one
    [h, 1, T] score row per sample instead of the reference's full eager [h, T, T] attention map;
  * a pre-hook on layer K gathers the kept hidden states, rotary cos / sin and position ids, and builds the
    attention mask of the pruned sequence with transformers' own `create_causal_mask` (so SDPA, eager and flash
    attention all get the mask they expect); layers > K reuse it;
  * in decoding, layers >= K get the mask of [kept prompt tokens, generated tokens]; generated tokens keep the
    position ids that generate() gives them (unpruned numbering, as the reference).

Cost, honestly: prefill runs layers 0..K-1 at the full P visual tokens per image (576 for LLaVA-1.5); only layers
K..L-1 and decoding see K_img. `fastv_layer` and `budget` are attributes for the profiler's analytic FLOPs.

Departures from the reference:
  1. Batch > 1 with left padding and several images per sample (video frames): K_img tokens are kept per image,
     ranked within that image (the reference handles one image, batch 1, with a fixed system-prompt offset). Padding
     keys are masked out of the ranking. Samples whose pruned lengths differ (different image counts) are left
     padded again.
  2. The reference's in-place variant re-runs the prompt without a KV cache in decoding (its generate path keeps
     pruning with `use_cache=False` or a separate KV-cache variant); here the pruned KV cache is used directly.
  3. Scores are computed in float32.
  Not supported: `labels` (the logits cover the pruned sequence), beam search / static caches, and a prompt that
  arrives in several chunks (images must be in the first forward of a sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from ..errors import UsageError
from .base import check_budget


@dataclass
class _Prompt:
    """What the current sequence's prefill needs and leaves behind for decoding."""

    image_mask: torch.Tensor  # [B, T] bool, positions of image tokens
    padding_mask: torch.Tensor  # [B, T] bool, True for real tokens
    query: torch.Tensor | None = None  # [B, 1, h dh] last token's query at layer K-1 (pre-RoPE)
    key: torch.Tensor | None = None  # [B, T, hkv dh] keys at layer K-1 (pre-RoPE)
    kept_mask: torch.Tensor | None = None  # [B, T'] bool, real tokens of the pruned prompt


@dataclass(eq=False)
class FastV:
    """Installs FastV on a VisToG-off model (`install`) and removes it (`remove`)."""

    budget: int  # visual tokens kept per image from layer K on
    fastv_layer: int  # K
    num_patches: int  # P, visual tokens per image in the prompt
    image_token_id: int
    needs_cls_attention: bool = False
    _handles: list[RemovableHandle] = field(default_factory=list, repr=False)
    _prompt: _Prompt | None = field(default=None, repr=False)
    _step_mask: torch.Tensor | None = field(default=None, repr=False)  # [B, T + t] 2-D mask of a decoding step
    _pruned_kwargs: dict = field(default_factory=dict, repr=False)  # layer kwargs for layers > K in this forward

    def __post_init__(self):
        check_budget(self.budget, self.num_patches)

    # -- installation ----------------------------------------------------------------------------------------------
    def install(self, model: nn.Module) -> None:
        """model: a VisToGForConditionalGeneration with VisToG off."""
        language_model = model.model.language_model
        layers = language_model.layers
        if not 1 <= self.fastv_layer < len(layers):
            raise UsageError(
                f"fastv_layer must be in 1..{len(layers) - 1} for a {len(layers)}-layer LLM, got {self.fastv_layer}"
            )
        self._config = language_model.config
        scored = layers[self.fastv_layer - 1].self_attn
        self._num_heads = scored.config.num_attention_heads
        self._head_dim = scored.head_dim
        self._kv_groups = scored.num_key_value_groups
        self._scaling = scored.scaling
        self._handles = [
            model.model.register_forward_pre_hook(self._start_forward, with_kwargs=True),
            scored.q_proj.register_forward_hook(self._capture_query),
            scored.k_proj.register_forward_hook(self._capture_key),
            layers[self.fastv_layer].register_forward_pre_hook(self._prune, with_kwargs=True),
        ]
        for layer in layers[self.fastv_layer + 1 :]:
            self._handles.append(layer.register_forward_pre_hook(self._pass_pruned, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._prompt = None

    # -- hooks -----------------------------------------------------------------------------------------------------
    def _start_forward(self, module, args, kwargs):
        """VisToGModel pre-hook: a new sequence (empty cache) starts a new prompt; otherwise a decoding step."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._pruned_kwargs = {}
        if cache is None or cache.get_seq_length() == 0:
            self._prompt = None
            self._step_mask = None
            if input_ids is None:
                if kwargs.get("pixel_values") is not None:
                    raise UsageError("fastv finds image tokens in input_ids: pass input_ids, not inputs_embeds")
                return
            image_mask = input_ids == self.image_token_id  # [B, T]
            if bool(image_mask.any()):
                padding = torch.ones_like(image_mask) if attention_mask is None else attention_mask.bool()
                self._prompt = _Prompt(image_mask=image_mask, padding_mask=padding)
        else:
            if input_ids is not None and bool((input_ids == self.image_token_id).any()):
                raise UsageError("fastv prunes images of the first forward of a sequence only, not of later chunks")
            self._step_mask = attention_mask
        return

    def _capture_query(self, module, args, output):
        if self._prompt is not None and self._prompt.kept_mask is None:
            self._prompt.query = output[:, -1:]  # [B, 1, h dh]

    def _capture_key(self, module, args, output):
        if self._prompt is not None and self._prompt.kept_mask is None:
            self._prompt.key = output  # [B, T, hkv dh]

    def _prune(self, module, args, kwargs):
        """Layer K pre-hook: prune the prompt (prefill) or give decoding the pruned layers' mask."""
        prompt = self._prompt
        if prompt is None:
            return None
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if prompt.kept_mask is None:  # prefill
            if prompt.query is None or prompt.key is None:
                raise RuntimeError("fastv: layer K-1's q / k projections were not seen in this forward")
            attention = last_token_attention(
                prompt.query, prompt.key, kwargs["position_embeddings"], prompt.padding_mask,
                head_dim=self._head_dim, kv_groups=self._kv_groups, scaling=self._scaling,
            )
            keep, prompt.kept_mask = kept_positions(
                attention, prompt.image_mask, prompt.padding_mask, num_patches=self.num_patches, budget=self.budget
            )
            prompt.query = prompt.key = None
            hidden_states = gather_rows(hidden_states, keep)  # [B, T', D]
            cos, sin = kwargs["position_embeddings"]
            self._pruned_kwargs["position_embeddings"] = (gather_rows(cos, keep), gather_rows(sin, keep))
            if kwargs.get("position_ids") is not None:
                self._pruned_kwargs["position_ids"] = kwargs["position_ids"].expand(keep.shape[0], -1).gather(1, keep)
            padding = prompt.kept_mask
        else:  # decoding: [kept prompt tokens, tokens generated since (this step's included)]
            generated = cache.get_seq_length(self.fastv_layer) + hidden_states.shape[1] - prompt.kept_mask.shape[1]
            if self._step_mask is None:  # generate() leaves the mask out when nothing is padded
                new = prompt.kept_mask.new_ones(prompt.kept_mask.shape[0], generated)
            else:
                new = self._step_mask[:, -generated:].to(prompt.kept_mask.device, torch.bool)
            padding = torch.cat([prompt.kept_mask, new], dim=1)
        self._pruned_kwargs["attention_mask"] = create_causal_mask(
            config=self._config,
            inputs_embeds=hidden_states,
            attention_mask=padding,
            cache=cache,
            layer_idx=self.fastv_layer,
        )
        kwargs.update(self._pruned_kwargs)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden_states
            return args, kwargs
        return (hidden_states, *args[1:]), kwargs

    def _pass_pruned(self, module, args, kwargs):
        """Pre-hook of layers > K: the pruned sequence's mask (and, in prefill, its rotary embedding)."""
        if not self._pruned_kwargs:
            return None
        kwargs.update(self._pruned_kwargs)
        return args, kwargs

def last_token_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    padding_mask: torch.Tensor,
    *,
    head_dim: int,
    kv_groups: int,
    scaling: float,
) -> torch.Tensor:
    """Attention of the last prompt token over the prompt at one layer, mean over heads: [B, T] (float32).

    query [B, 1, h dh] and key [B, T, hkv dh]: the layer's q / k projections before RoPE; position_embeddings:
    rotary (cos, sin) [B or 1, T, dh]; padding_mask [B, T] (True for real tokens; padding keys get no attention).
    """
    batch, length, _ = key.shape
    query = query.view(batch, 1, -1, head_dim).transpose(1, 2).float()  # [B, h, 1, dh]
    key = key.view(batch, length, -1, head_dim).transpose(1, 2).float()  # [B, hkv, T, dh]
    cos, sin = (x.float().unsqueeze(1) for x in position_embeddings)  # [B or 1, 1, T, dh]
    query = query * cos[..., -1:, :] + rotate_half(query) * sin[..., -1:, :]
    key = repeat_kv(key * cos + rotate_half(key) * sin, kv_groups)  # [B, h, T, dh]
    # [B, h, 1, T] <- [B, h, 1, dh] @ [B, h, dh, T]
    logits = (query @ key.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~padding_mask[:, None, None, :], -torch.inf)
    return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]


def kept_positions(
    attention: torch.Tensor, image_mask: torch.Tensor, padding_mask: torch.Tensor, *, num_patches: int, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions kept per sample: its text tokens and the top `budget` visual tokens of each of its images.

    attention, image_mask, padding_mask [B, T]; every run of `num_patches` image tokens is one image. Returns
    positions [B, T'] (increasing, left padded to the longest sample; padding slots point at 0) and their mask
    [B, T'] (True for real tokens).
    """
    rows = []
    for sample_images, scores in zip(image_mask, attention):
        images = sample_images.nonzero().squeeze(1)  # [n P]
        if images.numel() % num_patches:
            raise UsageError(
                f"fastv: a prompt has {images.numel()} image tokens, not a multiple of {num_patches} per image; "
                "expand <image> with tokens_per_image(model)"
            )
        blocks = images.view(-1, num_patches)  # [n, P], one row per image
        top = scores[blocks].topk(budget, dim=1).indices  # [n, K_img]
        keep = ~sample_images
        keep[blocks.gather(1, top).flatten()] = True
        rows.append(keep.nonzero().squeeze(1))
    length = max(row.numel() for row in rows)
    positions = torch.zeros(len(rows), length, dtype=torch.long, device=attention.device)
    valid = torch.zeros(len(rows), length, dtype=torch.bool, device=attention.device)
    for b, row in enumerate(rows):
        positions[b, length - row.numel() :] = row
        valid[b, length - row.numel() :] = True
    return positions, padding_mask.gather(1, positions) & valid


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B or 1, T, C], index [B, T'] -> [B, T', C]."""
    x = x.expand(index.shape[0], -1, -1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


__all__ = ["FastV", "gather_rows", "kept_positions", "last_token_attention"]
