"""VisToG on LLaVA-NeXT and LLaVA-OneVision: semantic tokens with isolated attention inside their CLIP / SigLIP
encoder, applied per view (the anyres base view and each tile; a video's frames), the grouping layer before their
projector.

    vt = VisToGFamily.from_llava_next(llava_next, num_semantic_tokens=64)      # transformers' model, reused
    vt = VisToGFamily.from_llava_onevision(onevision, num_semantic_tokens=64)
    patch, sem = vt.vision_states(views)     # [V, P, Dv] exactly the stock encoder's feature layer, [V, N, Dv]
    tokens = vt.visual_tokens(views)         # [V, N, D]: what the LLM receives for V views
    ids = vt.generate(**vt.inputs(processor, prompts, images), max_new_tokens=8)

Glossary: V views (tiles of one or more images), P patches of a view (576 CLIP-336, 729 SigLIP-384), I image tokens
of a view (CLS + P for CLIP, P for SigLIP), N semantic tokens, Dv vision width, D LLM width, T prompt length.

The stock model's modules are reused (no copy): its encoder's embeddings and layers run through the same layer
forward as LLaVA-1.5's VisToG tower (`vision.encoder_layer_forward`, attention by name), the semantic tokens joining
after the embeddings and before CLIP's pre-layernorm (as on LLaVA-1.5), layers up to the checkpoint's feature layer;
CLIP's CLS is dropped as NeXT's "default" strategy drops it, SigLIP has none ("full").
With `num_semantic_tokens=None` nothing is installed and the stock model serves (its logits are the stock logits by
construction). An image gives the LLM views x N tokens (its views: `image_size_to_num_patches` on the checkpoint's
grids): the anyres unpadding and newline tokens do not apply, since group tokens have no place in the image.
The prompt's placeholders are rebuilt to that count (`inputs`), and generation runs on `inputs_embeds`.
`save_pretrained(out)` writes the stock model as transformers 5 saves it plus `vistog_parts.safetensors` (semantic
tokens and grouping layer only) and `vistog_family.json` (N and the settings); `from_pretrained(out)` loads both
(safetensors, no remote code); `load_checkpoint` returns it for a folder with `vistog_family.json`, and the adapter
serves it as method `vistog` (its budget: N tokens per view).

Training (`vistog-bench train --stage vistog-stage1|2`, `vistog_bench.train.stages`): `forward(..., labels=)` returns
the stock model's output with its next-token loss (transformers' `loss_function` over the labels not -100), computed
on the same inputs_embeds path as generation; in training mode the grouping layer assigns patches by straight-through
hard Gumbel-softmax (`grouping.VisToGGroupingLayer`, as LLaVA-1.5's VisToG trains), argmax in eval mode. The trainer's
data expand each `<image>` with `view_tokens` (the count `inputs` rebuilds) and pass the views flat,
pixel_values [sum V, 3, H, W] with image_sizes [K, 2].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BatchFeature
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..errors import UsageError
from .families import family_inputs, family_of, image_runs, image_token_id, model_family
from .grouping import VisToGGroupingLayer
from .loading import load_config, load_pretrained
from .vision import encoder_layer_forward, feature_layers_run, init_semantic_tokens

PARTS_FILE = "vistog_parts.safetensors"
SETTINGS_FILE = "vistog_family.json"


def saved_settings(path: str | Path) -> dict | None:
    """The settings `VisToGFamily.save_pretrained` wrote in `path` (`num_semantic_tokens` and the grouping settings),
    None for a folder without them; an unreadable file is one line."""
    file = Path(path) / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from None
    if not isinstance(settings, dict):
        raise UsageError(f"{file}: expected a JSON object with an integer num_semantic_tokens")
    for key, value in settings.items():
        problem = _setting_problem(key, value)
        if problem:
            raise UsageError(f"{file}: {key} {problem}, got {value!r}")
    if "num_semantic_tokens" not in settings:
        raise UsageError(f"{file}: expected a JSON object with an integer num_semantic_tokens")
    return settings


# What each value of vistog_family.json must be (VisToGFamily's constructor arguments); a JSON `true` is no N and
# `"false"` no boolean, so the types are checked exactly.
_SETTING_RULES = {
    "num_semantic_tokens": ("must be an integer >= 1", lambda v: type(v) is int and v >= 1),
    "isolated_attention": ("must be true or false", lambda v: type(v) is bool),
    "grouping_mlp_ratio": ("must be a number > 0", lambda v: type(v) in (int, float) and v > 0),
    "gumbel_tau": ("must be a number > 0", lambda v: type(v) in (int, float) and v > 0),
    "grouping_logit_scale": ("must be a number > 0", lambda v: type(v) in (int, float) and v > 0),
}


def _setting_problem(key: str, value) -> str | None:
    if key not in _SETTING_RULES:
        return f"is not a VisToGFamily setting (known: {', '.join(_SETTING_RULES)})"
    rule, holds = _SETTING_RULES[key]
    return None if holds(value) else rule


@dataclass(frozen=True)
class ViewTokens:
    """Group tokens an image gives the LLM: views x N, its views from the checkpoint's anyres grids
    (`image_size_to_num_patches`: the base view plus the tiles the stock processor cuts). The one count both
    `VisToGFamily.inputs` (evaluation) and the trainer's data (`train.data.ViewConversationDataset`) expand each
    placeholder to; a small record, so data-loader workers carry it instead of the model."""

    grid_pinpoints: tuple[tuple[int, int], ...]  # config.image_grid_pinpoints, (height, width) each
    view_size: int  # the encoder's input side: one view, px
    tokens_per_view: int  # N

    def views(self, image_sizes: torch.Tensor) -> list[int]:
        """Views of each image, from image_sizes [K, 2] (height, width) as the processor returns them."""
        grids = [list(g) for g in self.grid_pinpoints]
        return [
            image_size_to_num_patches(image_size=size, grid_pinpoints=grids, patch_size=self.view_size)
            for size in image_sizes
        ]

    def counts(self, image_sizes: torch.Tensor) -> list[int]:
        """Image placeholders of each image: views x N."""
        return [views * self.tokens_per_view for views in self.views(image_sizes)]


class VisToGFamily(nn.Module):
    """A LLaVA-NeXT / OneVision model (transformers' class) with VisToG's semantic tokens, isolated attention and
    grouping layer per view."""

    def __init__(
        self,
        model,
        num_semantic_tokens: int,
        *,
        isolated_attention: bool = True,
        grouping_mlp_ratio: float = 4.0,
        gumbel_tau: float = 1.0,
        grouping_logit_scale: float = 10.0,
    ):
        super().__init__()
        family = model_family(model)
        if family is None or family.model_type not in ("llava_next", "llava_onevision"):
            raise UsageError(
                "VisToGFamily wraps LlavaNextForConditionalGeneration or LlavaOnevisionForConditionalGeneration"
            )
        config = model.config
        if not isinstance(config.vision_feature_layer, int):
            raise UsageError("VisToG groups one feature layer; this checkpoint concatenates several")
        self.stock = model
        vision = config.vision_config
        parameter = next(model.parameters())
        width = vision.hidden_size
        self.semantic_tokens = nn.Parameter(
            init_semantic_tokens(num_semantic_tokens, width, device=parameter.device, dtype=parameter.dtype)
        )
        self.grouping = VisToGGroupingLayer(
            width,
            mlp_ratio=grouping_mlp_ratio,
            tau=gumbel_tau,
            eps=vision.layer_norm_eps,
            logit_scale=grouping_logit_scale,
        ).to(device=parameter.device, dtype=parameter.dtype)
        self.isolated_attention = isolated_attention
        self.settings = {
            "isolated_attention": isolated_attention,
            "grouping_mlp_ratio": grouping_mlp_ratio,
            "gumbel_tau": gumbel_tau,
            "grouping_logit_scale": grouping_logit_scale,
        }
        self.train(model.training)

    @classmethod
    def from_llava_next(cls, model, num_semantic_tokens: int | None = 64, **settings):
        """VisToG parts freshly initialised on a stock LLaVA-NeXT model; None returns the stock model itself."""
        return model if num_semantic_tokens is None else cls(model, num_semantic_tokens, **settings)

    @classmethod
    def from_llava_onevision(cls, model, num_semantic_tokens: int | None = 64, **settings):
        """VisToG parts freshly initialised on a stock LLaVA-OneVision model; None returns the stock model itself."""
        return model if num_semantic_tokens is None else cls(model, num_semantic_tokens, **settings)

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, out: str | Path, state_dict: dict | None = None, **stock_kwargs) -> Path:
        """The stock model's files + the VisToG parts; `state_dict` (this module's keys, e.g. gathered from FSDP
        shards by the trainer) instead of the module's own tensors; `stock_kwargs` go to the stock model's
        `save_pretrained` (transformers' options, e.g. `save_original_format`)."""
        out = Path(out)
        state_dict = self.state_dict() if state_dict is None else state_dict
        stock = {k.removeprefix("stock."): v for k, v in state_dict.items() if k.startswith("stock.")}
        self.stock.save_pretrained(out, state_dict=stock, **stock_kwargs)
        parts = {k: v.detach().contiguous() for k, v in state_dict.items() if not k.startswith("stock.")}
        save_file(parts, str(out / PARTS_FILE), metadata={"format": "pt"})
        (out / SETTINGS_FILE).write_text(
            json.dumps({"num_semantic_tokens": self.num_semantic_tokens, **self.settings}, indent=2) + "\n"
        )
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, **load_kwargs) -> VisToGFamily:
        """A saved VisToGFamily: the stock model through `load_pretrained`, then the VisToG parts."""
        path = Path(path)
        settings = saved_settings(path)
        if settings is None or not (path / PARTS_FILE).is_file():
            raise UsageError(f"{path} holds no VisToG parts ({SETTINGS_FILE}, {PARTS_FILE})")
        family = family_of(load_config(path).model_type)
        if family is None:
            raise UsageError(f"{path}: VisToG parts need a llava_next / llava_onevision model")
        vt = cls(
            load_pretrained(family.model_class(), path, **load_kwargs), settings.pop("num_semantic_tokens"), **settings
        )
        missing, unexpected = vt.load_state_dict(load_file(str(path / PARTS_FILE)), strict=False)
        if unexpected or any(not name.startswith("stock.") for name in missing):
            raise UsageError(f"{path / PARTS_FILE} does not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return vt.eval()

    @property
    def config(self):
        """The stock model's config (the family, its token ids and grids)."""
        return self.stock.config

    @property
    def dtype(self) -> torch.dtype:
        return self.stock.dtype

    @property
    def num_semantic_tokens(self) -> int:
        return self.semantic_tokens.shape[1]

    @property
    def view_tokens(self) -> ViewTokens:
        config = self.stock.config
        grids = tuple(tuple(int(x) for x in g) for g in config.image_grid_pinpoints)
        return ViewTokens(grids, config.vision_config.image_size, self.num_semantic_tokens)

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """transformers' activation checkpointing of the stock model's layers (the LLM's decoder layers; the vision
        layers VisToG runs itself through `encoder_layer_forward` keep their activations)."""
        self.stock.activation_checkpointing_enable(**kwargs)

    # -- the vision path ---------------------------------------------------------------------------------------------
    def _encoder(self):
        tower = self.stock.model.vision_tower
        return getattr(tower, "vision_model", tower)  # CLIPVisionTransformer / SiglipVisionTransformer

    def vision_states(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature-layer states of V views [V, 3, H, W]: patches [V, P, Dv] (exactly the stock encoder's, CLS
        dropped) and semantic tokens [V, N, Dv]."""
        encoder = self._encoder()
        hidden = encoder.embeddings(views)  # [V, I, Dv]
        num_image_tokens = hidden.shape[1]
        semantic = self.semantic_tokens.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([hidden, semantic], dim=1)  # [V, I + N, Dv]
        if hasattr(encoder, "pre_layrnorm"):  # CLIP
            hidden = encoder.pre_layrnorm(hidden)
        layers = encoder.encoder.layers
        feature_layer = self.stock.config.vision_feature_layer
        count = feature_layers_run(feature_layer, len(layers))
        attention = "isolated" if self.isolated_attention else "sdpa"
        for index, layer in enumerate(layers[:count]):
            hidden = encoder_layer_forward(
                layer, hidden, attention, num_image_tokens=num_image_tokens, layer_index=index
            ).hidden_states
        first = 1 if self.stock.config.vision_feature_select_strategy == "default" else 0
        return hidden[:, first:num_image_tokens], hidden[:, num_image_tokens:]

    def visual_tokens(self, views: torch.Tensor) -> torch.Tensor:
        """What the LLM receives for V views: [V, N, D] (grouping per view, then the stock projector)."""
        patches, semantic = self.vision_states(views)
        return self.stock.model.multi_modal_projector(self.grouping(semantic, patches))  # [V, N, D]

    def views_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        return self.view_tokens.views(image_sizes)

    # -- prompts and generation --------------------------------------------------------------------------------------
    def inputs(self, processor, prompts, images) -> BatchFeature:
        """The processor's inputs with each image's placeholder run rebuilt to views x N tokens (left padded), and
        `visual_tokens_unreduced`: per sample, each image's count before (the processor's, a list; not a model
        input)."""
        data = family_inputs(processor, prompts, images)
        unreduced = [[int(r.numel()) for r in image_runs(ids, image_token_id(self.stock))] for ids in data["input_ids"]]
        counts = iter(self.view_tokens.counts(data["image_sizes"]))
        token = image_token_id(self.stock)
        pad = processor.tokenizer.pad_token_id
        rows = []
        for ids, mask in zip(data["input_ids"], data["attention_mask"], strict=True):
            ids = ids[mask.bool()]
            pieces, start = [], 0
            for run in image_runs(ids, token):
                pieces += [ids[start : int(run[0])], ids.new_full((next(counts),), token)]
                start = int(run[-1]) + 1
            rows.append(torch.cat([*pieces, ids[start:]]))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, length - len(row) :], attention_mask[b, length - len(row) :] = row, 1
        return BatchFeature(
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "pixel_values": data["pixel_values"],
                "image_sizes": data["image_sizes"],
                "visual_tokens_unreduced": unreduced,
            }
        )

    def inputs_embeds(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings [B, T, D] with every image placeholder replaced by its group tokens, in order.
        pixel_values: the processor's [K, V_max, 3, H, W] (padded views) or the views flat [sum V, 3, H, W];
        None for a text-only batch."""
        embeds = self.stock.get_input_embeddings()(input_ids)  # [B, T, D]
        where = input_ids == image_token_id(self.stock)
        if pixel_values is not None:
            counts = self.views_per_image(image_sizes)
            if pixel_values.dim() == 5:
                views = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts, strict=True)])  # [sum V, 3, H, W]
            elif pixel_values.shape[0] == sum(counts):
                views = pixel_values
            else:
                raise UsageError(f"views: {pixel_values.shape[0]}, the image sizes give {sum(counts)}")
            tokens = self.visual_tokens(views.to(embeds.dtype)).reshape(-1, embeds.shape[-1])  # [sum V N, D]
        elif self.training:
            # A text-only batch in training: one blank view's group tokens join at length 0, as LLaVA's text-only
            # samples join `image_features[0:0]` of a zero image (llava/model/llava_arch.py, llava/train/train.py):
            # every VisToG part is in the graph (DDP reduces all of them; stage 1's loss has a grad_fn).
            side = self.stock.config.vision_config.image_size
            blank = embeds.new_zeros((1, 3, side, side))
            tokens = self.visual_tokens(blank).reshape(-1, embeds.shape[-1])[:0]  # [0, D]
        else:
            tokens = embeds.new_zeros((0, embeds.shape[-1]))
        if int(where.sum()) != tokens.shape[0]:
            raise UsageError(
                f"image tokens: {int(where.sum())}, group tokens: {tokens.shape[0]} "
                "(build the prompt with VisToGFamily.inputs)"
            )
        return embeds.masked_scatter(where.unsqueeze(-1), tokens.to(embeds.dtype))

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, labels=None, **kwargs):
        """The stock model's output on the group tokens; with labels [B, T] (-100 where not trained) its `.loss`."""
        embeds = self.inputs_embeds(input_ids, pixel_values, image_sizes)
        return self.stock(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, image_sizes, **kwargs):
        """[B, T + new] as transformers' generate returns it (on inputs_embeds it returns the new tokens only: the
        prompt ids are put back in front)."""
        embeds = self.inputs_embeds(input_ids, pixel_values, image_sizes)
        new = self.stock.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


__all__ = ["PARTS_FILE", "SETTINGS_FILE", "ViewTokens", "VisToGFamily", "saved_settings"]
