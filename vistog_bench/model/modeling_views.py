"""VisToG per view on LLaVA-NeXT and LLaVA-OneVision: transformers' stock classes with VisToG's parts added
(`semantic_tokens`, `grouping`), saved and loaded as any transformers model (config.json with model_type
`vistog_llava_next` / `vistog_llava_onevision`, model.safetensors), as LLaVA-1.5's VisToG (modeling.py) is.

Glossary: view, one encoder input (the anyres base view, a tile; a video's frame); V views, P patches of a view (576
CLIP-336, 729 SigLIP-384), I image tokens of a view (CLS + P for CLIP, P for SigLIP), N semantic tokens, Dv vision
width, D LLM width, T prompt length, K images.

    vt = VisToGLlavaNextForConditionalGeneration.from_stock(llava_next, num_semantic_tokens=64)  # modules reused
    patch, sem = vt.vision_states(views)     # [V, P, Dv] exactly the stock encoder's feature layer, [V, N, Dv]
    tokens = vt.visual_tokens(views)         # [V, N, D]: what the LLM receives for V views
    ids = vt.generate(**vt.inputs(processor, prompts, images), max_new_tokens=8)
    vt.save_pretrained(out); load_checkpoint(out)   # or an earlier folder with vistog_family.json (load_legacy)

An image gives the LLM views x N group tokens (no unpadding, no newline tokens: group tokens have no place in the
image); `inputs` rebuilds each placeholder run to that count and the LLM runs on `inputs_embeds`. The encoder path,
training and the earlier save format: docs/model.md, "VisToG on LLaVA-NeXT / OneVision".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BatchFeature, LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..errors import UsageError
from .config import VIEW_SETTING_RULES, VisToGLlavaNextConfig, VisToGLlavaOnevisionConfig, view_setting_problem
from .grouping import VisToGGroupingLayer
from .processing import family_inputs, image_runs, image_token_id
from .vision import encoder_layer_forward, feature_layers_run, init_semantic_tokens

# An earlier checkpoint's files (VisToGFamily.save_pretrained, vistog_bench/model/families_vistog.py at ddec5ea)
LEGACY_PARTS_FILE = "vistog_parts.safetensors"
LEGACY_SETTINGS_FILE = "vistog_family.json"
_OWN_CONFIG_KEYS = ("model_type", "architectures", "transformers_version")


@dataclass(frozen=True)
class ViewTokens:
    """Group tokens an image gives the LLM: views x N, its views from the checkpoint's anyres grids
    (`image_size_to_num_patches`: the base view plus the tiles the stock processor cuts). The one count both
    `inputs` (evaluation) and the trainer's data (`train.data.ViewConversationDataset`) expand each placeholder to;
    a small record, so data-loader workers carry it instead of the model."""

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


class VisToGViews:
    """VisToG's parts and paths on a LLaVA-NeXT / OneVision class (mixed in before transformers' class)."""

    config_class = None  # set by each class below, with the stock class it extends
    stock_class = None

    def __init__(self, config):
        super().__init__(config)  # the stock modules, initialised as the stock class initialises them
        width = config.vision_config.hidden_size
        self.semantic_tokens = nn.Parameter(init_semantic_tokens(config.num_semantic_tokens, width))  # [1, N, Dv]
        self.grouping = self._grouping_layer(config)

    @staticmethod
    def _grouping_layer(config) -> VisToGGroupingLayer:
        return VisToGGroupingLayer(
            config.vision_config.hidden_size,
            mlp_ratio=config.grouping_mlp_ratio,
            tau=config.gumbel_tau,
            eps=config.vision_config.layer_norm_eps,
            logit_scale=config.grouping_logit_scale,
        )

    @classmethod
    def views_config(cls, stock_config, num_semantic_tokens: int, **settings):
        """The stock config as this class's config with VisToG's settings (its sub-configs are the stock's own
        objects, so their attention implementation carries over)."""
        data = {k: v for k, v in stock_config.to_dict().items() if k not in _OWN_CONFIG_KEYS}
        data.update(vision_config=stock_config.vision_config, text_config=stock_config.text_config)
        config = cls.config_class(**data, num_semantic_tokens=num_semantic_tokens, **settings)
        config._attn_implementation = stock_config._attn_implementation
        return config

    @classmethod
    def from_stock(cls, stock, num_semantic_tokens: int | None = 64, **settings):
        """VisToG parts freshly initialised on a stock model (its modules reused, no copy), on its device and dtype;
        None returns the stock model itself (VisToG off is the stock model)."""
        if num_semantic_tokens is None:
            return stock
        if not isinstance(stock, cls.stock_class):
            raise UsageError(f"{cls.__name__} wraps {cls.stock_class.__name__}, not {type(stock).__name__}")
        config = cls.views_config(stock.config, num_semantic_tokens, **settings)
        with torch.device("meta"):
            model = cls(config)
        model.model, model.lm_head = stock.model, stock.lm_head
        parameter = next(stock.parameters())
        width = config.vision_config.hidden_size
        # semantic tokens first, then the grouping layer: the order the random draws were always taken in
        model.semantic_tokens = nn.Parameter(
            init_semantic_tokens(num_semantic_tokens, width, device=parameter.device, dtype=parameter.dtype)
        )
        model.grouping = cls._grouping_layer(config).to(device=parameter.device, dtype=parameter.dtype)
        model.generation_config = stock.generation_config
        model.train(stock.training)
        return model

    @property
    def num_semantic_tokens(self) -> int:
        return self.semantic_tokens.shape[1]

    @property
    def view_tokens(self) -> ViewTokens:
        config = self.config
        grids = tuple(tuple(int(x) for x in g) for g in config.image_grid_pinpoints)
        return ViewTokens(grids, config.vision_config.image_size, self.num_semantic_tokens)

    # -- the vision path ---------------------------------------------------------------------------------------------
    def _encoder(self):
        tower = self.model.vision_tower
        return getattr(tower, "vision_model", tower)  # CLIPVisionTransformer / SiglipVisionTransformer

    def vision_states(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature-layer states of V views [V, 3, H, W]: patches [V, P, Dv] (exactly the stock encoder's, CLS
        dropped) and semantic tokens [V, N, Dv]."""
        encoder = self._encoder()
        hidden = encoder.embeddings(views)  # [V, I, Dv]
        num_image_tokens = hidden.shape[1]
        semantic = self.semantic_tokens.to(hidden.dtype).expand(hidden.shape[0], -1, -1)  # [V, N, Dv]
        hidden = torch.cat([hidden, semantic], dim=1)  # [V, I + N, Dv]
        if hasattr(encoder, "pre_layrnorm"):  # CLIP
            hidden = encoder.pre_layrnorm(hidden)
        layers = encoder.encoder.layers
        count = feature_layers_run(self.config.vision_feature_layer, len(layers))
        attention = "isolated" if self.config.isolated_attention else "sdpa"
        for index, layer in enumerate(layers[:count]):
            hidden = encoder_layer_forward(
                layer, hidden, attention, num_image_tokens=num_image_tokens, layer_index=index
            ).hidden_states
        first = 1 if self.config.vision_feature_select_strategy == "default" else 0
        return hidden[:, first:num_image_tokens], hidden[:, num_image_tokens:]

    def visual_tokens(self, views: torch.Tensor) -> torch.Tensor:
        """What the LLM receives for V views: [V, N, D] (grouping per view, then the stock projector)."""
        patches, semantic = self.vision_states(views)
        return self.model.multi_modal_projector(self.grouping(semantic, patches))  # [V, N, D]

    def views_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        return self.view_tokens.views(image_sizes)

    # -- prompts and generation --------------------------------------------------------------------------------------
    def inputs(self, processor, prompts, images) -> BatchFeature:
        """The processor's inputs with each image's placeholder run rebuilt to views x N tokens (left padded), and
        `visual_tokens_unreduced`: per sample, each image's count before (the processor's, a list; not a model
        input)."""
        data = family_inputs(processor, prompts, images)
        token = image_token_id(self)
        unreduced = [[int(r.numel()) for r in image_runs(ids, token)] for ids in data["input_ids"]]
        counts = iter(self.view_tokens.counts(data["image_sizes"]))
        pad = processor.tokenizer.pad_token_id
        rows = []
        for ids, mask in zip(data["input_ids"], data["attention_mask"], strict=True):
            ids = ids[mask.bool()]  # [T_b] unpadded
            pieces, start = [], 0
            for run in image_runs(ids, token):
                pieces += [ids[start : int(run[0])], ids.new_full((next(counts),), token)]
                start = int(run[-1]) + 1
            rows.append(torch.cat([*pieces, ids[start:]]))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # [B, T]
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
        embeds = self.get_input_embeddings()(input_ids)  # [B, T, D]
        where = input_ids == image_token_id(self)  # [B, T]
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
            side = self.config.vision_config.image_size
            blank = embeds.new_zeros((1, 3, side, side))
            tokens = self.visual_tokens(blank).reshape(-1, embeds.shape[-1])[:0]  # [0, D]
        else:
            tokens = embeds.new_zeros((0, embeds.shape[-1]))  # [0, D]
        if int(where.sum()) != tokens.shape[0]:
            raise UsageError(
                f"image tokens: {int(where.sum())}, group tokens: {tokens.shape[0]} (build the prompt with `inputs`)"
            )
        return embeds.masked_scatter(where.unsqueeze(-1), tokens.to(embeds.dtype))

    def forward(
        self, input_ids=None, attention_mask=None, pixel_values=None, image_sizes=None, inputs_embeds=None, **kwargs
    ):
        """The stock model's output on the group tokens; with labels [B, T] (-100 where not trained) its `.loss`.
        `generate`'s own steps (inputs_embeds, then each new token's id) pass to the stock forward unchanged."""
        if inputs_embeds is None and (pixel_values is not None or past_is_empty(kwargs)):
            inputs_embeds, input_ids = self.inputs_embeds(input_ids, pixel_values, image_sizes), None
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, image_sizes, **kwargs):
        """[B, T + new] as transformers' generate returns it (on inputs_embeds it returns the new tokens only: the
        prompt ids are put back in front)."""
        embeds = self.inputs_embeds(input_ids, pixel_values, image_sizes)
        new = super().generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


def past_is_empty(kwargs: dict) -> bool:
    """Whether a forward call starts a sequence (no key / value cache from earlier steps): the prompt, whose image
    placeholders must become group tokens, not one decode step of `generate`."""
    cache = kwargs.get("past_key_values")
    return cache is None or cache.get_seq_length() == 0


class VisToGLlavaNextForConditionalGeneration(VisToGViews, LlavaNextForConditionalGeneration):
    """LLaVA-NeXT (CLIP-336 views, anyres) with VisToG per view."""

    config_class = VisToGLlavaNextConfig
    stock_class = LlavaNextForConditionalGeneration


class VisToGLlavaOnevisionForConditionalGeneration(VisToGViews, LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision (SigLIP-384 views, anyres_max_9) with VisToG per view."""

    config_class = VisToGLlavaOnevisionConfig
    stock_class = LlavaOnevisionForConditionalGeneration


VIEWS_CLASSES = {
    "llava_next": VisToGLlavaNextForConditionalGeneration,
    "llava_onevision": VisToGLlavaOnevisionForConditionalGeneration,
}


# -- earlier checkpoints: stock files + vistog_parts.safetensors + vistog_family.json ---------------------------------
def legacy_settings(path: str | Path) -> dict | None:
    """The settings an earlier checkpoint's vistog_family.json holds (`num_semantic_tokens` and the grouping
    settings), None for a folder without one; an unreadable or invalid file is one line."""
    file = Path(path) / LEGACY_SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from None
    if not isinstance(settings, dict):
        raise UsageError(f"{file}: expected a JSON object with an integer num_semantic_tokens")
    for key, value in settings.items():
        problem = view_setting_problem(key, value)
        if problem:
            raise UsageError(f"{file}: {key} {problem}, got {value!r}")
    if "num_semantic_tokens" not in settings:
        raise UsageError(f"{file}: expected a JSON object with an integer num_semantic_tokens")
    return settings


def legacy_config(path: str | Path, stock_config):
    """An earlier checkpoint's config as the per-view VisToG config (`stock_config` its config.json, the stock
    model's), or `stock_config` itself for a folder without vistog_family.json."""
    settings = legacy_settings(path)
    if settings is None:
        return stock_config
    cls = VIEWS_CLASSES.get(stock_config.model_type)
    if cls is None:
        raise UsageError(f"{path}: VisToG parts need a llava_next / llava_onevision model")
    settings = dict(settings)
    return cls.views_config(stock_config, settings.pop("num_semantic_tokens"), **settings)


def load_legacy(path: str | Path, config, **load_kwargs):
    """An earlier checkpoint (`config` from `legacy_config`): the stock model through `load_pretrained`, VisToG's
    parts from vistog_parts.safetensors."""
    from .loading import load_pretrained

    path = Path(path)
    if not (path / LEGACY_PARTS_FILE).is_file():
        raise UsageError(f"{path} holds no VisToG parts ({LEGACY_SETTINGS_FILE}, {LEGACY_PARTS_FILE})")
    views_class = next(c for c in VIEWS_CLASSES.values() if isinstance(config, c.config_class))
    stock = load_pretrained(views_class.stock_class, path, **load_kwargs)
    settings = {key: getattr(config, key) for key in VIEW_SETTING_RULES}
    model = views_class.from_stock(stock, **settings)  # the loaded stock's config, its attention implementation
    missing, unexpected = model.load_state_dict(load_file(str(path / LEGACY_PARTS_FILE)), strict=False)
    own = {name for name, _ in model.named_parameters() if not name.startswith(("model.", "lm_head."))}
    if unexpected or own & set(missing):
        raise UsageError(
            f"{path / LEGACY_PARTS_FILE} does not match: missing {sorted(own & set(missing))[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model.eval()


__all__ = [
    "LEGACY_PARTS_FILE",
    "LEGACY_SETTINGS_FILE",
    "VIEWS_CLASSES",
    "ViewTokens",
    "VisToGLlavaNextForConditionalGeneration",
    "VisToGLlavaOnevisionForConditionalGeneration",
    "VisToGViews",
    "legacy_config",
    "legacy_settings",
    "load_legacy",
]
