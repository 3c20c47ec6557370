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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from ..errors import UsageError

ALIGNMENT = dict(  # pretrain.sh
    data_format="plain", batch_size=32, grad_accum=1, lr=1e-3, weight_decay=0.0, warmup_ratio=0.03, epochs=1.0,
    max_length=2048, mixed_precision="bf16", gradient_checkpointing=True, num_workers=4,
)  # fmt: skip
INSTRUCTION = dict(  # finetune.sh
    data_format="conversation", batch_size=16, grad_accum=1, lr=2e-5, weight_decay=0.0, warmup_ratio=0.03,
    epochs=1.0, max_length=2048, mixed_precision="bf16", gradient_checkpointing=True, num_workers=4,
    group_by_modality_length=True,
)  # fmt: skip
VISTOG_BUDGET = 64  # inferred (see the module docstring)
VISTOG_STAGE2_GROUPING_LR = 2e-4  # inferred


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
        "llava", {**ALIGNMENT, "train_llm": False}, "zero2.yaml", "llava-1.5-7b", 8,
        "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "LLaVA scripts/v1_5/pretrain.sh",
    ),
    "llava-1.5-7b-stage2": Recipe(
        "llava", INSTRUCTION, "zero3.yaml", "llava-1.5-7b", 8, "llava_v1_5_mix665k.json",
        "LLaVA scripts/v1_5/finetune.sh",
    ),
    "vistog-7b-stage1": Recipe(
        "vistog-stage1", {**ALIGNMENT, "num_semantic_tokens": VISTOG_BUDGET}, "zero2.yaml", "llava-1.5-7b", 8,
        "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "LLaVA pretrain.sh settings; stage split from VisToG",
        ("data, rates and N=64 inferred: the paper does not state them",),
    ),
    "vistog-7b-stage2": Recipe(
        "vistog-stage2", {**INSTRUCTION, "num_semantic_tokens": VISTOG_BUDGET, "grouping_lr": VISTOG_STAGE2_GROUPING_LR},
        "zero3.yaml", "llava-1.5-7b", 8,
        "llava_v1_5_mix665k.json", "LLaVA finetune.sh settings; stage split from VisToG",
        ("grouping_lr inferred: the paper does not state it",),
    ),
}  # fmt: skip


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
