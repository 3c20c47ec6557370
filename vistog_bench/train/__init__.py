"""The trainer for LLaVA-1.5 and VisToG (stage 1 and 2), from the embedded tiny models to 7B on 8 GPUs.

    from vistog_bench.train import TrainConfig, train
    train(TrainConfig(
        stage="vistog-stage1", model="ckpt/llava-1.5-7b-hf", num_semantic_tokens=64, data=..., output_dir=...
    ))

Command line: `vistog-bench train ...` = `python -m vistog_bench.train ...` (under `accelerate launch` or `torchrun`);
`--recipe NAME` fills LLaVA-1.5's / our hyper-parameters (`recipes.py`), `--plan` prints the per-GPU memory of a recipe.
Modules: config (TrainConfig), data (LLaVA's JSON formats, batching), stages (what trains), loop (accelerate),
recipes, planner, cli; `configs/` holds the accelerate config files the recipes name.
"""

from .config import STAGES, TrainConfig
from .loop import TrainResult, train

__all__ = ["STAGES", "TrainConfig", "TrainResult", "train"]
