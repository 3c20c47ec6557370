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
serves it as method `vistog` (its budget: N tokens per view). Not yet: the trainer's recipes for these families.
"""

from __future__ import annotations

import json
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
from .vision import encoder_layer_forward, init_semantic_tokens


PARTS_FILE = "vistog_parts.safetensors"
SETTINGS_FILE = "vistog_family.json"


class VisToGFamily(nn.Module):
    """A LLaVA-NeXT / OneVision model (transformers' class) with VisToG's semantic tokens, isolated attention and
    grouping layer per view."""

    def __init__(self, model, num_semantic_tokens: int, *, isolated_attention: bool = True,
                 grouping_mlp_ratio: float = 4.0, gumbel_tau: float = 1.0, grouping_logit_scale: float = 10.0):
        super().__init__()
        family = model_family(model)
        if family is None or family.model_type not in ("llava_next", "llava_onevision"):
            raise UsageError("VisToGFamily wraps LlavaNextForConditionalGeneration or "
                             "LlavaOnevisionForConditionalGeneration")
        config = model.config
        if not isinstance(config.vision_feature_layer, int):
            raise UsageError("VisToG groups one feature layer; this checkpoint concatenates several")
        self.stock = model
        vision = config.vision_config
        parameter = next(model.parameters())
        width = vision.hidden_size
        self.semantic_tokens = nn.Parameter(
            init_semantic_tokens(num_semantic_tokens, width, device=parameter.device, dtype=parameter.dtype))
        self.grouping = VisToGGroupingLayer(width, mlp_ratio=grouping_mlp_ratio, tau=gumbel_tau,
                                            eps=vision.layer_norm_eps, logit_scale=grouping_logit_scale,
                                            ).to(device=parameter.device, dtype=parameter.dtype)  # fmt: skip
        self.isolated_attention = isolated_attention
        self.settings = {"isolated_attention": isolated_attention, "grouping_mlp_ratio": grouping_mlp_ratio,
                         "gumbel_tau": gumbel_tau, "grouping_logit_scale": grouping_logit_scale}  # fmt: skip
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
    def save_pretrained(self, out: str | Path) -> Path:
        out = Path(out)
        self.stock.save_pretrained(out)
        parts = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("stock.")}
        save_file(parts, str(out / PARTS_FILE), metadata={"format": "pt"})
        (out / SETTINGS_FILE).write_text(json.dumps(
            {"num_semantic_tokens": self.num_semantic_tokens, **self.settings}, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, **load_kwargs) -> "VisToGFamily":
        """A saved VisToGFamily: the stock model through `load_pretrained`, then the VisToG parts."""
        path = Path(path)
        if not (path / SETTINGS_FILE).is_file() or not (path / PARTS_FILE).is_file():
            raise UsageError(f"{path} holds no VisToG parts ({SETTINGS_FILE}, {PARTS_FILE})")
        family = family_of(load_config(path).model_type)
        if family is None:
            raise UsageError(f"{path}: VisToG parts need a llava_next / llava_onevision model")
        settings = json.loads((path / SETTINGS_FILE).read_text())
        vt = cls(load_pretrained(family.model_class(), path, **load_kwargs), settings.pop("num_semantic_tokens"),
                 **settings)  # fmt: skip
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
        count = feature_layer if feature_layer >= 0 else len(layers) + 1 + feature_layer
        attention = "isolated" if self.isolated_attention else "sdpa"
        for index, layer in enumerate(layers[:count]):
            hidden = encoder_layer_forward(layer, hidden, attention, num_image_tokens=num_image_tokens,
                                           layer_index=index).hidden_states  # fmt: skip
        first = 1 if self.stock.config.vision_feature_select_strategy == "default" else 0
        return hidden[:, first:num_image_tokens], hidden[:, num_image_tokens:]

    def visual_tokens(self, views: torch.Tensor) -> torch.Tensor:
        """What the LLM receives for V views: [V, N, D] (grouping per view, then the stock projector)."""
        patches, semantic = self.vision_states(views)
        return self.stock.model.multi_modal_projector(self.grouping(semantic, patches))  # [V, N, D]

    def views_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        config = self.stock.config
        return [image_size_to_num_patches(image_size=size, grid_pinpoints=config.image_grid_pinpoints,
                                          patch_size=config.vision_config.image_size) for size in image_sizes]  # fmt: skip

    # -- prompts and generation --------------------------------------------------------------------------------------
    def inputs(self, processor, prompts, images) -> BatchFeature:
        """The processor's inputs with each image's placeholder run rebuilt to views x N tokens (left padded), and
        `visual_tokens_unreduced`: per sample, each image's count before (the processor's, a list; not a model
        input)."""
        data = family_inputs(processor, prompts, images)
        unreduced = [[int(r.numel()) for r in image_runs(ids, image_token_id(self.stock))] for ids in data["input_ids"]]
        views = iter(self.views_per_image(data["image_sizes"]))
        token = image_token_id(self.stock)
        pad = processor.tokenizer.pad_token_id
        rows = []
        for ids, mask in zip(data["input_ids"], data["attention_mask"]):
            ids = ids[mask.bool()]
            pieces, start = [], 0
            for run in image_runs(ids, token):
                pieces += [ids[start : int(run[0])], ids.new_full((next(views) * self.num_semantic_tokens,), token)]
                start = int(run[-1]) + 1
            rows.append(torch.cat([*pieces, ids[start:]]))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, length - len(row) :], attention_mask[b, length - len(row) :] = row, 1
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask,
                             "pixel_values": data["pixel_values"], "image_sizes": data["image_sizes"],
                             "visual_tokens_unreduced": unreduced})  # fmt: skip

    def inputs_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_sizes: torch.Tensor):
        """Token embeddings [B, T, D] with every image placeholder replaced by its group tokens, in order."""
        counts = self.views_per_image(image_sizes)
        views = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)]) if pixel_values.dim() == 5 else pixel_values
        embeds = self.stock.get_input_embeddings()(input_ids)  # [B, T, D]
        tokens = self.visual_tokens(views.to(embeds.dtype)).reshape(-1, embeds.shape[-1])  # [sum V N, D]
        where = input_ids == image_token_id(self.stock)
        if int(where.sum()) != tokens.shape[0]:
            raise UsageError(f"image tokens: {int(where.sum())}, group tokens: {tokens.shape[0]} "
                             "(build the prompt with VisToGFamily.inputs)")  # fmt: skip
        return embeds.masked_scatter(where.unsqueeze(-1), tokens.to(embeds.dtype))

    def forward(self, input_ids, attention_mask, pixel_values, image_sizes, **kwargs):
        embeds = self.inputs_embeds(input_ids, pixel_values, image_sizes)
        return self.stock(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, image_sizes, **kwargs):
        """[B, T + new] as transformers' generate returns it (on inputs_embeds it returns the new tokens only: the
        prompt ids are put back in front)."""
        embeds = self.inputs_embeds(input_ids, pixel_values, image_sizes)
        new = self.stock.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


__all__ = ["PARTS_FILE", "SETTINGS_FILE", "VisToGFamily"]
