"""Encoder attention scores for visionzip / vispruner on LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL.

    scores = EncoderScores(model)          # hooks the one encoder layer it reads (installed by the family pruner)
    image = scores.image(i)                # ImageScores of image i of the current forward, in LLM-input order

Glossary: N views (an image's base view and tiles, all images of a forward), h heads, S tokens of a view, P patches
of a view (S - 1 for CLIP, whose token 0 is CLS), dh head width, V visual tokens of one image at the LLM input
(views unpadded and packed, newline tokens included), G 2 x 2 PatchMerger groups (Qwen2.5-VL).

What each family scores (one encoder layer, the layer whose output the LLM reads unless said otherwise):
- LLaVA-NeXT (CLIP, CLS inside the encoder, dropped for the LLM by `vision_feature_select_strategy` "default"): the
  CLS -> patch attention of each view at the feature layer (-2), mean over heads, as on LLaVA-1.5
  (model/vision.py) and as VisionZip's and VisPruner's LLaVA-NeXT runs read it per view (dvlab-research/VisionZip
  `visionzip/llava_arch.py`, Theia-4869/VisPruner `llava/model/llava_arch.py` `encode_images`: CLS attention of
  `attentions[select_layer]`, each anyres view on its own).
- LLaVA-OneVision (SigLIP, no CLS): the published substitute, the mean attention each patch receives at the last
  encoder layer, mean over queries and heads (Theia-4869/VisPruner `llava/model/multimodal_encoder/
  siglip_encoder.py` `feature_select`: `attentions[-1].mean(dim=-2)`, then the head mean in `encode_images`); the
  hub config's feature layer is that last layer (-1).
- Qwen2.5-VL (no CLS; window attention; a PatchMerger gives the LLM one token per 2 x 2 patches): the same mean
  received attention at the last full-attention block (`fullatt_block_indexes[-1]`, the encoder's last block in the
  released configs), over each image's own patches (the block's `cu_seqlens`), then selection after the
  PatchMerger: an LLM token scores the mean of its 4 patches (the encoder keeps each group's 4 patches adjacent in
  its window order, `permute_input_for_window_attn`), and the groups are put back in the LLM's order with
  transformers' own `get_vision_window_index` (the merger's `reverse_indices`).
Keys (VisionZip's contextual metric) are the same layer's keys, mean over heads (Qwen2.5-VL: before the rotary
embedding, the group's mean).

How: a forward pre-hook on that layer's attention module, active inside the model's image-feature call
(`ImageFeatureCall`, which also reads the image sizes the packing needs), reads its input (already normalised by the
layer) and computes q / k with the module's own projections (and, for Qwen2.5-VL, its rotary tables), then
softmax(q k^T * s) in float32 for the one layer read; the encoder runs with its loaded kernel (SDPA / flash), never
switched to eager.
For NeXT and OneVision the per-view scores go through the model's own `pack_image_features` (unpadding, OneVision's
anyres_max_9 pooling, newline tokens), so each score lands on the LLM-input token it belongs to.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..model.families import family_of_model
from ..model.vision import cls_attention, feature_layers_run

QUERY_CHUNK = 1024  # queries per softmax block of the mean received attention: [h, 1024, S] at a time


@dataclass
class ImageScores:
    """One image's tokens as the LLM receives them, in order."""

    score: torch.Tensor  # [V] float32 score of each token (0 for newline tokens)
    view: torch.Tensor  # [V] long: 0 the base view, 1.. the tiles (one id for a pooled tile grid), -1 newline tokens
    keys: torch.Tensor  # [V, dh] the scored layer's keys, mean over heads


@dataclass
class LayerScores:
    """What the hooked layer gave in the current forward (the images' encoder call only)."""

    score: torch.Tensor  # CLIP / SigLIP [N, P]; Qwen2.5-VL [S_all] per patch, in the encoder's window order
    keys: torch.Tensor  # [N, P, dh]; Qwen2.5-VL [S_all, dh]


def mean_received_attention(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Mean over heads and queries of softmax(q k^T * scaling): the attention each token receives. query, key
    [N, h, S, dh] -> [N, S] float32, in query blocks of QUERY_CHUNK (never the whole [N, h, S, S] at once)."""
    heads, length = query.shape[1], query.shape[2]
    key = key.float().transpose(-1, -2)  # [N, h, dh, S]
    total = query.new_zeros(query.shape[0], length, dtype=torch.float32)
    for start in range(0, length, QUERY_CHUNK):
        # [N, h, c, S] <- [N, h, c, dh] @ [N, h, dh, S]
        weights = torch.softmax((query[:, :, start : start + QUERY_CHUNK].float() @ key) * scaling, dim=-1)
        total += weights.sum(dim=(1, 2))
    return total / (heads * length)


def scored_layer_index(model) -> int:
    """Index of the encoder layer whose attention is read (see the module docstring)."""
    family = family_of_model(model)
    if family.model_type == "qwen2_5_vl":
        return model.config.vision_config.fullatt_block_indexes[-1]
    feature_layer = model.config.vision_feature_layer
    num_layers = model.config.vision_config.num_hidden_layers
    if not isinstance(feature_layer, int):
        raise UsageError(
            f"{family.model_type}: attention scores read one feature layer; this checkpoint concatenates"
            f" layers {feature_layer}"
        )
    return feature_layers_run(feature_layer, num_layers) - 1


def describe_scores(model) -> str:
    """The AppliedMethod-style `vision_scores` line: what is read, where, and the encoder's own kernel."""
    family = family_of_model(model)
    layer = scored_layer_index(model)
    what = {
        "llava_next": "CLS attention of each view",
        "llava_onevision": "mean received attention of each view",
        "qwen2_5_vl": "mean received attention per 2 x 2 PatchMerger group",
    }[family.model_type]
    kernel = model.config.vision_config._attn_implementation or "eager"
    return f"{what} at encoder layer {layer} (float32, from its q / k; encoder kernel {kernel}, unchanged)"


class EncoderScores:
    """Hooks one encoder layer of a family model and gives each image's scores in LLM-input order."""

    def __init__(self, model) -> None:
        family = family_of_model(model)
        self.model_type = family.model_type
        self.config = model.config
        if self.model_type == "llava_next" and model.config.vision_feature_select_strategy != "default":
            raise UsageError(
                "llava_next: CLS attention scores the patches the LLM reads with vision_feature_select_"
                f"strategy 'default' (CLS dropped); this checkpoint uses "
                f"'{model.config.vision_feature_select_strategy}'"
            )
        self.layer = scored_layer_index(model)
        self._model = model.model  # the LLaVA / Qwen model: pack_image_features, image_newline
        self._inputs: dict = {}
        self._scoring = False  # inside the model's get_image_features call
        self._layer: LayerScores | None = None
        self._images: list[ImageScores] | None = None

    def install(self, model) -> list:
        """Hooks (each with `remove()`): the scored attention module, the model's image-feature call, and a
        pre-hook refusing videos."""
        if self.model_type == "qwen2_5_vl":
            attention = model.model.visual.blocks[self.layer].attn
        else:
            attention = model.model.vision_tower.encoder.layers[self.layer].self_attn
        return [
            ImageFeatureCall(model.model, self._start_images, self._end_images),
            model.model.register_forward_pre_hook(self._refuse_videos, with_kwargs=True),
            attention.register_forward_pre_hook(self._score, with_kwargs=True),
        ]

    # -- hooks -----------------------------------------------------------------------------------------------------
    def _start_images(self, arguments: dict) -> None:
        self._inputs = {k: arguments.get(k) for k in ("image_sizes", "batch_num_images", "image_grid_thw")}
        self._layer, self._images, self._scoring = None, None, True

    def _end_images(self) -> None:
        self._scoring = False

    def _refuse_videos(self, module, args, kwargs):
        if kwargs.get("pixel_values_videos") is not None or (kwargs.get("mm_encoder_outputs") or {}).get("video"):
            raise UsageError(
                f"encoder attention scores on {self.model_type} are read for images only; this batch has "
                "a video (serve videos with random, divprune or cdpruner)"
            )

    def _score(self, module, args, kwargs):
        if not self._scoring:  # the encoder outside the images' feature call (a video's frames)
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        with torch.no_grad():
            self._layer = (
                self._qwen_scores(module, hidden, kwargs)
                if self.model_type == "qwen2_5_vl"
                else self._view_scores(module, hidden)
            )

    def _view_scores(self, attn, hidden: torch.Tensor) -> LayerScores:
        """CLIP / SigLIP layer input [N, S, Dv] -> per-view scores [N, P] and keys [N, P, dh]."""
        batch, length, _ = hidden.shape
        query, key = (
            proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj)
        )  # [N, h, S, dh] each
        if self.model_type == "llava_next":  # CLS first: its row, CLS column dropped
            return LayerScores(cls_attention(query, key, attn.scale), key[:, :, 1:].mean(dim=1).float())
        return LayerScores(mean_received_attention(query, key, attn.scale), key.mean(dim=1).float())

    def _qwen_scores(self, attn, hidden: torch.Tensor, kwargs: dict) -> LayerScores:
        """Qwen2.5-VL block input [S_all, Dv] (window order) -> per-patch scores [S_all] and keys [S_all, dh]."""
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            apply_rotary_pos_emb_vision,
        )

        length = hidden.shape[0]
        query, key, _ = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        plain_key = key  # [S_all, h, dh] before the rotary embedding
        cos, sin = kwargs["position_embeddings"]
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        bounds = kwargs["cu_seqlens"].tolist()
        score = torch.cat(
            [
                mean_received_attention(query[a:b].transpose(0, 1)[None], key[a:b].transpose(0, 1)[None], attn.scaling)[
                    0
                ]
                for a, b in itertools.pairwise(bounds)
            ]
        )
        return LayerScores(score, plain_key.mean(dim=1).float())

    # -- per image -------------------------------------------------------------------------------------------------
    def image(self, index: int) -> ImageScores:
        """Scores of image `index` (in prompt order over the batch) of the current forward."""
        if self._layer is None:
            raise RuntimeError("encoder scores: the scored encoder layer did not run in this forward")
        if self._images is None:
            self._images = self._qwen_images() if self.model_type == "qwen2_5_vl" else self._packed_images()
        return self._images[index]

    def _packed_images(self) -> list[ImageScores]:
        """Per-view scores and keys through the model's own packing: one channel per quantity, newline marked."""
        from transformers.models.llava_next.modeling_llava_next import (
            image_size_to_num_patches,
        )

        config, layer = self.config, self._layer
        sizes = self._inputs["image_sizes"]
        per_sample = self._inputs.get("batch_num_images")
        # OneVision tiles an image only when its sample has one image (get_image_features' `need_patching`)
        tiled = [True] * len(sizes) if per_sample is None else [n == 1 for n in per_sample for _ in range(n)]
        views = [
            image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size) if tile else 1
            for size, tile in zip(sizes, tiled, strict=True)
        ]
        view_id = torch.arange(layer.score.shape[0]) - torch.tensor([0, *views[:-1]]).cumsum(0).repeat_interleave(
            torch.tensor(views)
        )  # [N] 0 for each image's base view, then 1, 2, ...
        # [N, P, 3 + dh]: score, newline flag (0), view id, keys
        channels = torch.cat(
            [
                layer.score[..., None],
                torch.zeros_like(layer.score)[..., None],
                view_id[:, None, None].to(layer.score).expand(-1, layer.score.shape[1], 1),
                layer.keys,
            ],
            dim=-1,
        )
        newline = channels.new_zeros(channels.shape[-1])
        newline[1] = 1.0
        features = list(torch.split(channels, views, dim=0))
        if self.model_type == "llava_next":
            packed, _ = self._model.pack_image_features(
                features, sizes, vision_feature_select_strategy="default", image_newline=newline
            )
        else:
            packed, _ = self._model.pack_image_features(
                features, sizes, image_newline=newline, vision_aspect_ratio=config.vision_aspect_ratio
            )
        return [_image_scores(tokens) for tokens in packed]

    def _qwen_images(self) -> list[ImageScores]:
        from transformers.vision_utils import get_vision_window_index

        vision = self.config.vision_config
        grid = self._inputs["image_grid_thw"]
        window_index, _ = get_vision_window_index(
            grid,
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            patch_size=vision.patch_size,
        )
        unit = vision.spatial_merge_size**2
        order = torch.argsort(window_index.to(self._layer.score.device))  # the merger's reverse_indices
        score = self._layer.score.view(-1, unit).mean(dim=1)[order]  # [G] LLM order
        keys = self._layer.keys.view(-1, unit, self._layer.keys.shape[-1]).mean(dim=1)[order]  # [G, dh]
        counts = (grid.prod(dim=1) // unit).tolist()
        return [
            ImageScores(s, torch.zeros(s.shape[0], dtype=torch.long, device=s.device), k)
            for s, k in zip(score.split(counts), keys.split(counts), strict=True)
        ]


class ImageFeatureCall:
    """Reads the arguments of `owner.get_image_features` (image_sizes, batch_num_images, image_grid_thw): generate()
    encodes images before the prefill (`mm_encoder_outputs`) and passes those sizes to no module, so no module hook
    sees them. An instance attribute of the same signature over the class's method, calling it unchanged; `remove`
    deletes it."""

    def __init__(self, owner, start: Callable[[dict], None], end: Callable[[], None]) -> None:
        original = owner.get_image_features
        signature = inspect.signature(original)

        @functools.wraps(original)  # generate() reads the signature to pick the encoder's arguments
        def get_image_features(*args, **kwargs):
            start(signature.bind_partial(*args, **kwargs).arguments)
            try:
                return original(*args, **kwargs)
            finally:
                end()

        self._owner = owner
        owner.get_image_features = get_image_features

    def remove(self) -> None:
        self._owner.__dict__.pop("get_image_features", None)


def _image_scores(tokens: torch.Tensor) -> ImageScores:
    """Packed channels [V, 3 + dh] -> ImageScores. OneVision's anyres_max_9 pooling interpolates a large tile grid,
    blending tile ids at tile borders: such a pooled grid is one view."""
    is_newline = tokens[:, 1] > 0.5
    view = tokens[:, 2]
    tiles = (view > 0) & ~is_newline
    if not torch.equal(view[tiles], view[tiles].round()):
        view = torch.where(tiles, torch.ones_like(view), view)
    view = torch.where(is_newline, -torch.ones_like(view), view.round()).long()
    return ImageScores(torch.where(is_newline, torch.zeros_like(tokens[:, 0]), tokens[:, 0]), view, tokens[:, 3:])


__all__ = [
    "EncoderScores",
    "ImageFeatureCall",
    "ImageScores",
    "LayerScores",
    "describe_scores",
    "mean_received_attention",
    "scored_layer_index",
]
