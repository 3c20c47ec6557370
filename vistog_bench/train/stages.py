"""The model each stage trains, with exactly that stage's parameters trainable:

pretrain-vision   the LLaVA checkpoint's vision tower learns per-region attributes (a linear head per attribute
                  reads every patch at LLaVA's feature layer; the heads are discarded)
llava             projector + LLM (+ the vision tower with train_vision); a stock LLaVA checkpoint out
vistog-stage1     vision and LLM frozen; semantic tokens, grouping layer and projector train
                  (a LLaVA checkpoint is wrapped with `from_llava(num_semantic_tokens=N)`, a LLaVA-NeXT /
                  OneVision one with `VisToGFamily(model, N)`: the family from config.model_type)
vistog-stage2     as stage 1, plus the LLM (the paper's instruction-aware grouping); vision stays frozen
"""

from __future__ import annotations

from pathlib import Path

from ..dtypes import torch_dtype
from ..errors import UsageError
from .config import TrainConfig


def patch_regions(patch_grid: int, region_grid: int):
    """Region index (row-major on the G x G grid) of each patch, by the patch centre: [P]."""
    import torch

    centres = (torch.arange(patch_grid) + 0.5) / patch_grid  # [g] in (0, 1)
    cells = (centres * region_grid).long().clamp(max=region_grid - 1)  # [g]
    return (cells[:, None] * region_grid + cells[None, :]).reshape(-1)  # [P]


def build_region_pretrainer(vision_tower, feature_layer: int, classes: dict[str, list[str]], region_grid: int):
    """The vision tower + one linear head per attribute; every patch predicts the labels of its region."""
    import torch
    from torch import nn

    class RegionPretrainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = vision_tower
            width = vision_tower.config.hidden_size
            self.heads = nn.ModuleList([nn.Linear(width, len(c)) for c in classes.values()])
            patch_grid = vision_tower.config.image_size // vision_tower.config.patch_size
            self.register_buffer("regions", patch_regions(patch_grid, region_grid), persistent=False)

        def forward(self, pixel_values, region_targets):
            outputs = self.vision_tower(pixel_values, output_hidden_states=True)
            patches = outputs.hidden_states[feature_layer][:, 1:]  # [B, P, Dv], CLS dropped as LLaVA does
            targets = region_targets[:, :, self.regions]  # [B, A, P] <- [B, A, G*G]
            losses = [
                nn.functional.cross_entropy(head(patches).flatten(0, 1), targets[:, a].flatten())
                for a, head in enumerate(self.heads)
            ]
            return torch.stack(losses).mean()

    return RegionPretrainer()


def _load(cls, path: Path, dtype):
    from ..model.loading import load_pretrained

    return load_pretrained(cls, path, dtype=dtype)  # remote code refused, corrupt weights one line


def _llava_for_stage(config: TrainConfig, checkpoint, path: Path, has_weights: bool):
    import torch
    from transformers import LlavaForConditionalGeneration

    if checkpoint.model_type != "llava":
        raise UsageError(
            f"stage {config.stage} trains a LLaVA checkpoint; {path} holds a {checkpoint.model_type!r} model"
        )
    dtype = torch_dtype(config.dtype)
    if has_weights:
        model = _load(LlavaForConditionalGeneration, path, dtype)
    else:
        torch.manual_seed(config.seed)
        model = LlavaForConditionalGeneration(checkpoint).to(dtype)
    return model


def _check_semantic_tokens(config: TrainConfig, path: Path, have: int) -> None:
    if config.num_semantic_tokens not in (None, have):
        raise UsageError(f"{path} has {have} semantic tokens, --num-semantic-tokens asks {config.num_semantic_tokens}")


def _family_vistog_for_stage(config: TrainConfig, family, path: Path, dtype):
    """VisToG on LLaVA-NeXT / OneVision: fresh parts on the stock checkpoint, or a saved VisToGFamily folder."""
    import torch

    from ..model.families_vistog import SETTINGS_FILE, VisToGFamily

    if family.model_type not in ("llava_next", "llava_onevision"):
        raise UsageError(
            f"stage {config.stage}: VisToG wraps LLaVA-1.5, LLaVA-NeXT or LLaVA-OneVision; {path} holds "
            f"a {family.model_type!r} model"
        )
    if (path / SETTINGS_FILE).is_file():
        model = VisToGFamily.from_pretrained(path, dtype=dtype)
        _check_semantic_tokens(config, path, model.num_semantic_tokens)
        return model
    if config.num_semantic_tokens is None:
        raise UsageError(f"{path} is a {family.model_type} checkpoint: give --num-semantic-tokens N for VisToG")
    stock = _load(family.model_class(), path, dtype)
    torch.manual_seed(config.seed)
    return VisToGFamily(stock, config.num_semantic_tokens)


def _vistog_for_stage(config: TrainConfig, checkpoint, path: Path, has_weights: bool):
    import torch
    from transformers import LlavaForConditionalGeneration

    from ..model import VisToGForConditionalGeneration
    from ..model.families import family_of

    if not has_weights:
        raise UsageError(f"stage {config.stage} starts from trained weights; {path} has no *.safetensors")
    dtype = torch_dtype(config.dtype)
    family = family_of(checkpoint.model_type)
    if family is not None:
        model = _family_vistog_for_stage(config, family, path, dtype)
    elif checkpoint.model_type == "llava":
        if config.num_semantic_tokens is None:
            raise UsageError(f"{path} is a LLaVA checkpoint: give --num-semantic-tokens N for VisToG")
        torch.manual_seed(config.seed)
        model = VisToGForConditionalGeneration.from_llava(
            _load(LlavaForConditionalGeneration, path, dtype), num_semantic_tokens=config.num_semantic_tokens
        )
    elif checkpoint.model_type == "vistog":
        model = _load(VisToGForConditionalGeneration, path, dtype)
        have = model.config.num_semantic_tokens
        if have is None:
            raise UsageError(f"{path} is a VisToG checkpoint with VisToG off; start from a LLaVA checkpoint")
        _check_semantic_tokens(config, path, have)
    else:
        raise UsageError(
            f"{path} holds a {checkpoint.model_type!r} model; expected 'llava', 'vistog', "
            "'llava_next' or 'llava_onevision'"
        )
    return model


def trainable_parts(model, stage: str, train_llm: bool = True, train_vision: bool = False) -> list:
    """The modules (and parameters) a stage trains; everything else is frozen."""
    from ..model.families_vistog import VisToGFamily

    family = isinstance(model, VisToGFamily)
    top = model.stock if family else model  # transformers' LLaVA / LLaVA-NeXT / OneVision class
    inner = top.model
    if stage == "pretrain-vision":
        return [inner.vision_tower]
    llm = [inner.language_model, top.lm_head]
    if stage == "llava":
        return (
            [inner.multi_modal_projector] + (llm if train_llm else []) + ([inner.vision_tower] if train_vision else [])
        )
    new = [model.grouping, model.semantic_tokens] if family else [inner.grouping, inner.vision_tower.semantic_tokens]
    return new + [inner.multi_modal_projector] + (llm if stage == "vistog-stage2" else [])


def load_for_stage(config: TrainConfig):
    """The model a stage trains, `requires_grad` on exactly the stage's parameters."""
    from ..model.loading import load_config

    path = Path(config.model)
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a checkpoint folder: config.json is missing")
    checkpoint = load_config(path)  # refuses a checkpoint that asks to run its own code
    has_weights = any(path.glob("*.safetensors"))
    build = _llava_for_stage if config.stage in ("pretrain-vision", "llava") else _vistog_for_stage
    return set_trainable(build(config, checkpoint, path, has_weights), config)


def set_trainable(model, config: TrainConfig):
    """`requires_grad` on exactly the stage's parameters (trainable_parts), off everywhere else; returns `model`."""
    model.requires_grad_(False)
    for part in trainable_parts(model, config.stage, config.train_llm, config.train_vision):
        part.requires_grad_(True)
    return model


def store_frozen_in(model, dtype) -> int:
    """Frozen parameters stored in the mixed-precision dtype (LLaVA keeps its frozen CLIP in bf16): autocast computes
    in it anyway, and they need no fp32 master copy. Returns how many parameters were cast."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.dtype != dtype and p.is_floating_point()]
    for parameter in frozen:
        parameter.data = parameter.data.to(dtype)
    return len(frozen)


def tokens_per_image(model) -> int:
    if hasattr(model, "num_visual_tokens"):
        return model.num_visual_tokens
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2  # LLaVA's "default" strategy: every patch, CLS dropped


def conversation_dataset(config: TrainConfig, model, records, image_folder: Path, processor, prompts):
    """The conversations as `model` reads them: a fixed count per image (LLaVA-1.5, VisToG on it), or views x N per
    image through the processor's anyres path (VisToG on LLaVA-NeXT / OneVision)."""
    from ..model.families_vistog import VisToGFamily
    from .data import ConversationDataset, ViewConversationDataset

    if isinstance(model, VisToGFamily):
        return ViewConversationDataset(
            records, image_folder, processor, prompts, model.view_tokens, config.max_length, config.data_format
        )
    return ConversationDataset(
        records, image_folder, processor, prompts, tokens_per_image(model), config.max_length, config.data_format
    )
