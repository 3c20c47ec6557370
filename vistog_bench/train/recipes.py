"""Named recipes: the hyper-parameters of LLaVA-1.5's two stages and of VisToG's two stages, in one place.

Sources (haotian-liu/LLaVA, the scripts LLaVA-1.5 was trained with):
- `scripts/v1_5/pretrain.sh`: `--version plain`, blip_laion_cc_sbu_558k.json, projector only
  (`--tune_mm_mlp_adapter True`), per-device batch 32 x 8 GPUs x accumulation 1 = 256, lr 1e-3, weight decay 0,
  warm-up ratio 0.03, cosine, 1 epoch, `--model_max_length 2048`, bf16, gradient checkpointing, 4 loader workers,
  `--deepspeed ./scripts/zero2.json`.
- `scripts/v1_5/finetune.sh`: `--version v1`, llava_v1_5_mix665k.json, projector + LLM, batch 16 x 8 x 1 = 128,
  lr 2e-5, `--group_by_modality_length True`, `--image_aspect_ratio pad`, otherwise as above, `./scripts/zero3.json`.

VisToG (arXiv 2411.17773) says which parts train in which stage (stage 1: semantic tokens, grouping, projector with
vision and LLM frozen; stage 2: + LLM) but not the data, budget or rates. Our inferred choices, marked as such:
- stage 1 on LLaVA's alignment data at LLaVA's alignment settings (the new parts are, like the projector, fresh);
- stage 2 on LLaVA's instruction data at LLaVA's instruction settings; the grouping parts keep a higher rate
  (`grouping_lr` 2e-4, ten times the LLM's) because stage 1's rate 1e-3 trained them from scratch and 2e-5 would
  barely move them;
- N = 64 semantic tokens (a ninth of 576, the budget most token-reduction papers report on LLaVA-1.5).

VisToG on LLaVA-NeXT / OneVision (`--model` the released llava-hf checkpoint; VisToG per view, `modeling_views.py`):
the same stage split and the same inference (stage 1 at the alignment stage's settings, stage 2 at the instruction
stage's), with the settings of LLaVA-VL/LLaVA-NeXT's own scripts (`scripts/train/`, whose README calls
`finetune_clip.sh` "the first image version LLaVA-NeXT (2024-01) training script"):
- `pretrain_clip.sh` / `pretrain_siglip.sh`: `--version plain`, blip_558k_plain.json (LLaVA-1.5's 558k), projector only
  (`--mm_tunable_parts mm_mlp_adapter`), per-device batch 16, accumulation 1, lr 1e-3, weight decay 0, warm-up 0.03,
  cosine, 1 epoch, `--model_max_length 8192`, bf16, gradient checkpointing, 16 loader workers, `scripts/zero3.json`.
- `finetune_clip.sh` (NeXT, anyres on the 1.6 grids): llava_1_6.json, per-device batch 4, accumulation 1, lr 1e-5,
  `--group_by_modality_length True`, `--model_max_length 32768`, 16 workers, zero3; vision at
  `--mm_vision_tower_lr 2e-6`, which VisToG's stage 2 does not train.
- `finetune_ov.sh` (OneVision, anyres_max_9): per-device batch 1, accumulation 2, lr 1e-5, 32768 tokens, 4 workers,
  zero3, "for 7b model we recommend bs=1, accum=2, 16 nodes, 128 gpus"; its data is a YAML of JSON files (and videos,
  which this trainer does not read): give the trainer their concatenation as one LLaVA JSON.
The scripts launch on `${NUM_GPUS}` per node: the NeXT recipes assume 8 GPUs (keep the global batch with
`--grad-accum` on another count). Inferred, as for LLaVA-1.5: N = 64 per view (a ninth of a 336-px view's 576
patches; OneVision's 384-px view has 729) and stage 2's `grouping_lr` 1e-4, ten times the LLM's rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from ..errors import UsageError

ALIGNMENT = dict(  # pretrain.sh
    data_format="plain",
    batch_size=32,
    grad_accum=1,
    lr=1e-3,
    weight_decay=0.0,
    warmup_ratio=0.03,
    epochs=1.0,
    max_length=2048,
    mixed_precision="bf16",
    gradient_checkpointing=True,
    num_workers=4,
)
INSTRUCTION = dict(  # finetune.sh
    data_format="conversation",
    batch_size=16,
    grad_accum=1,
    lr=2e-5,
    weight_decay=0.0,
    warmup_ratio=0.03,
    epochs=1.0,
    max_length=2048,
    mixed_precision="bf16",
    gradient_checkpointing=True,
    num_workers=4,
    group_by_modality_length=True,
)
VISTOG_BUDGET = 64  # inferred (see the module docstring)
VISTOG_STAGE2_GROUPING_LR = 2e-4  # inferred
NEXT_ALIGNMENT = dict(  # LLaVA-NeXT pretrain_clip.sh = pretrain_siglip.sh
    data_format="plain",
    batch_size=16,
    grad_accum=1,
    lr=1e-3,
    weight_decay=0.0,
    warmup_ratio=0.03,
    epochs=1.0,
    max_length=8192,
    mixed_precision="bf16",
    gradient_checkpointing=True,
    num_workers=16,
)
NEXT_INSTRUCTION = dict(  # LLaVA-NeXT finetune_clip.sh
    data_format="conversation",
    batch_size=4,
    grad_accum=1,
    lr=1e-5,
    weight_decay=0.0,
    warmup_ratio=0.03,
    epochs=1.0,
    max_length=32768,
    mixed_precision="bf16",
    gradient_checkpointing=True,
    num_workers=16,
    group_by_modality_length=True,
)
ONEVISION_INSTRUCTION = {**NEXT_INSTRUCTION, "batch_size": 1, "grad_accum": 2, "num_workers": 4}  # finetune_ov.sh
FAMILY_STAGE2_GROUPING_LR = 1e-4  # inferred: ten times the LLM's 1e-5


@dataclass(frozen=True)
class Recipe:
    stage: str
    values: dict  # TrainConfig fields
    accelerate_config: str  # file in vistog_bench/train/configs/
    shape: str  # model.presets name, for the planner
    gpus: int  # the cluster the batch sizes are written for
    data: str  # the file it is meant for
    source: str
    notes: tuple[str, ...] = field(default=())

    @property
    def global_batch(self) -> int:
        return self.values["batch_size"] * self.values["grad_accum"] * self.gpus


RECIPES = {
    "llava-1.5-7b-stage1": Recipe(
        "llava",
        {**ALIGNMENT, "train_llm": False},
        "zero2.yaml",
        "llava-1.5-7b",
        8,
        "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
        "LLaVA scripts/v1_5/pretrain.sh",
    ),
    "llava-1.5-7b-stage2": Recipe(
        "llava",
        INSTRUCTION,
        "zero3.yaml",
        "llava-1.5-7b",
        8,
        "llava_v1_5_mix665k.json",
        "LLaVA scripts/v1_5/finetune.sh",
    ),
    "vistog-7b-stage1": Recipe(
        "vistog-stage1",
        {**ALIGNMENT, "num_semantic_tokens": VISTOG_BUDGET},
        "zero2.yaml",
        "llava-1.5-7b",
        8,
        "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
        "LLaVA pretrain.sh settings; stage split from VisToG",
        ("data, rates and N=64 inferred: the paper does not state them",),
    ),
    "vistog-7b-stage2": Recipe(
        "vistog-stage2",
        {**INSTRUCTION, "num_semantic_tokens": VISTOG_BUDGET, "grouping_lr": VISTOG_STAGE2_GROUPING_LR},
        "zero3.yaml",
        "llava-1.5-7b",
        8,
        "llava_v1_5_mix665k.json",
        "LLaVA finetune.sh settings; stage split from VisToG",
        ("grouping_lr inferred: the paper does not state it",),
    ),
    "vistog-next-7b-stage1": Recipe(
        "vistog-stage1",
        {**NEXT_ALIGNMENT, "num_semantic_tokens": VISTOG_BUDGET},
        "zero3.yaml",
        "llava-next-7b",
        8,
        "blip_558k_plain.json (LLaVA-Pretrain 558k)",
        "LLaVA-NeXT scripts/train/pretrain_clip.sh settings",
        ("N=64 per view inferred; 8 GPUs assumed (the script uses ${NUM_GPUS})", "--plan does not cover NeXT yet"),
    ),
    "vistog-next-7b-stage2": Recipe(
        "vistog-stage2",
        {**NEXT_INSTRUCTION, "num_semantic_tokens": VISTOG_BUDGET, "grouping_lr": FAMILY_STAGE2_GROUPING_LR},
        "zero3.yaml",
        "llava-next-7b",
        8,
        "llava_1_6.json",
        "LLaVA-NeXT scripts/train/finetune_clip.sh settings, vision frozen (VisToG's stage 2)",
        ("grouping_lr inferred; 8 GPUs assumed (the script uses ${NUM_GPUS})", "--plan does not cover NeXT yet"),
    ),
    "vistog-onevision-7b-stage1": Recipe(
        "vistog-stage1",
        {**NEXT_ALIGNMENT, "num_semantic_tokens": VISTOG_BUDGET},
        "zero3.yaml",
        "llava-onevision-7b",
        8,
        "blip_558k_plain.json (LLaVA-Pretrain 558k)",
        "LLaVA-NeXT scripts/train/pretrain_siglip.sh settings",
        ("N=64 per view inferred; 8 GPUs assumed (the script uses ${NUM_GPUS})", "--plan does not cover OneVision yet"),
    ),
    "vistog-onevision-7b-stage2": Recipe(
        "vistog-stage2",
        {**ONEVISION_INSTRUCTION, "num_semantic_tokens": VISTOG_BUDGET, "grouping_lr": FAMILY_STAGE2_GROUPING_LR},
        "zero3.yaml",
        "llava-onevision-7b",
        128,
        "the OneVision stage's JSON files concatenated (images; videos not read)",
        "LLaVA-NeXT scripts/train/finetune_ov.sh settings (128 GPUs, its 7B advice), vision frozen",
        ("grouping_lr inferred", "--plan does not cover OneVision yet"),
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def accelerate_config_path(name: str):
    """Path of an accelerate config file shipped in vistog_bench/train/configs/."""
    path = resources.files("vistog_bench.train.configs") / name
    if not path.is_file():
        raise UsageError(f"no accelerate config {name!r} in vistog_bench/train/configs/")
    return path
