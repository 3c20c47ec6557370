"""The model each stage trains, with exactly that stage's parameters trainable:

pretrain-vision   the LLaVA checkpoint's vision tower learns per-region attributes (a linear head per attribute
                  reads every patch at LLaVA's feature layer; the heads are discarded)
llava             projector + LLM (+ the vision tower with train_vision); a stock LLaVA checkpoint out
vistog-stage1     vision and LLM frozen; semantic tokens, grouping layer and projector train
                  (a LLaVA checkpoint is wrapped with `from_llava(num_semantic_tokens=N)`, a LLaVA-NeXT /
                  OneVision one with VisToG per view, `from_stock(model, N)`)
vistog-stage2     as stage 1, plus the LLM (the paper's instruction-aware grouping); vision stays frozen

The checkpoint's family (`model.families.family_for(config)`) builds the model a stage starts from and names the
modules it trains (`ModelFamily.training_model`, `trainable_modules`); this module sets them trainable.

    model = load_for_stage(config)             # requires_grad on exactly the stage's parameters
    dataset = conversation_dataset(config, model, records, image_folder, processor, prompts)
"""

from __future__ import annotations

from pathlib import Path

from ..dtypes import torch_dtype
from ..errors import UsageError
from ..model.geometry import patch_side
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
            patch_grid = patch_side(vision_tower.config)
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


def trainable_parts(model, stage: str, train_llm: bool = True, train_vision: bool = False) -> list:
    """The modules (and parameters) a stage trains, as the model's family names them; everything else is frozen."""
    from ..model.families import family_of_model

    return family_of_model(model).trainable_modules(model, stage, train_llm, train_vision)


def load_for_stage(config: TrainConfig):
    """The model a stage trains, `requires_grad` on exactly the stage's parameters."""
    from ..model.families import family_for
    from ..model.loading import load_config

    path = Path(config.model)
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a checkpoint folder: config.json is missing")
    checkpoint = load_config(path)  # refuses a checkpoint that asks to run its own code
    model = family_for(checkpoint).training_model(
        config.stage,
        path,
        checkpoint,
        has_weights=any(path.glob("*.safetensors")),
        num_semantic_tokens=config.num_semantic_tokens,
        dtype=torch_dtype(config.dtype),
        seed=config.seed,
    )
    return set_trainable(model, config)


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


def conversation_dataset(config: TrainConfig, model, records, image_folder: Path, processor, prompts):
    """The conversations as `model` reads them: a fixed count per image (LLaVA-1.5, VisToG on it), or views x N per
    image through the processor's anyres path (VisToG per view on LLaVA-NeXT / OneVision: the family's
    `view_tokens`)."""
    from ..model.families import family_of_model
    from .data import ConversationDataset, ViewConversationDataset

    family = family_of_model(model)
    views = family.view_tokens(model)
    if views is not None:
        return ViewConversationDataset(
            records, image_folder, processor, prompts, views, config.max_length, config.data_format
        )
    per_image = family.tokens_per_placeholder(model)
    return ConversationDataset(
        records, image_folder, processor, prompts, per_image, config.max_length, config.data_format
    )
