"""`vistog-bench train` = `python -m vistog_bench.train`: flags -> TrainConfig -> `train`.

    vistog-bench train --stage vistog-stage1 --model ckpt/llava-1.5-7b-hf --num-semantic-tokens 64 \\
        --data blip_laion_cc_sbu_558k.json --image-folder LLaVA-Pretrain/images --output-dir out/s1
    vistog-bench train --recipe llava-1.5-7b-stage1 --llm ckpt/vicuna-7b-v1.5 \\
        --vision-tower ckpt/clip-vit-large-patch14-336 --data blip_laion_cc_sbu_558k.json --output-dir out/llava-s1
    accelerate launch --config_file "$(vistog-bench train --config-path zero3.yaml)" -m vistog_bench.train \\
        --recipe vistog-7b-stage2 --model out/s1 --data llava_v1_5_mix665k.json --image-folder data --output-dir out/s2
    vistog-bench train --recipe vistog-7b-stage2 --plan --gpus 8 --gpu-memory-gb 40
    vistog-bench train --demo          # rebuild the embedded tiny models

A recipe fills the hyper-parameters (recipes.py, with their sources); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import UsageError
from .config import DATA_FORMATS, MIXED_PRECISION, STAGES, TrainConfig

# flag -> argparse keywords; the field is the flag's name (or `dest`), its default TrainConfig's or the recipe's
FLAGS = {
    "--stage": dict(choices=STAGES, help="what to train (see vistog_bench.train.stages)"),
    "--model": dict(help="checkpoint folder to start from (LLaVA or VisToG, Hugging Face layout)"),
    "--llm": dict(help="llava stage from its parts: the LLM folder (e.g. lmsys/vicuna-7b-v1.5), with --vision-tower"),
    "--vision-tower": dict(help="llava stage from its parts: the CLIP folder (e.g. openai/clip-vit-large-patch14-336)"),
    "--data": dict(help="training data: LLaVA JSON (region JSON for pretrain-vision)"),
    "--image-folder": dict(help="folder image paths are relative to (default: the data file's folder)"),
    "--output-dir": dict(help="where the trained checkpoint (and checkpoints/ of resumable states) are written"),
    "--data-format": dict(choices=DATA_FORMATS, help="conversation (chat template) or LLaVA's plain alignment format"),
    "--num-semantic-tokens": dict(type=int, help="N, the VisToG budget (when --model is LLaVA)"),
    "--train-vision": dict(action="store_true", help="llava stage: train the vision tower too"),
    "--no-train-llm": dict(action="store_false", dest="train_llm", help="llava stage: projector only (alignment)"),
    "--epochs": dict(type=float, help="passes over the data (ignored with --max-steps)"),
    "--max-steps": dict(type=int, help="optimizer steps (overrides --epochs)"),
    "--batch-size": dict(type=int, help="samples per process per micro-step"),
    "--grad-accum": dict(type=int, help="gradient accumulation steps"),
    "--lr": dict(type=float),
    "--grouping-lr": dict(type=float, help="vistog stages: learning rate of the semantic tokens + grouping layer"),
    "--weight-decay": dict(type=float),
    "--warmup-ratio": dict(type=float),
    "--max-length": dict(type=int, help="tokens per sample, image tokens included"),
    "--dtype": dict(help="weights dtype when loading (float32, bfloat16, float16)"),
    "--mixed-precision": dict(
        choices=MIXED_PRECISION, help="autocast; frozen parts are stored in it (default: accelerate's config)"
    ),
    "--gradient-checkpointing": dict(action="store_true", help="recompute activations in backward"),
    "--group-by-modality-length": dict(
        action="store_true", help="LLaVA-1.5's batching: image-only or text-only batches of similar lengths"
    ),
    "--seed": dict(type=int),
    "--chat-template": dict(help="template file to train with instead of the checkpoint's own; saved with the result"),
    "--threads": dict(type=int, help="torch CPU threads"),
    "--num-workers": dict(type=int, help="data loader worker processes"),
    "--log-every": dict(type=int, help="steps between loss lines"),
    "--save-steps": dict(type=int, help="write a resumable state every K optimizer steps"),
    "--save-total-limit": dict(type=int, help="resumable states kept (oldest removed)"),
    "--resume-from-checkpoint": dict(metavar="DIR|latest", help="continue from a resumable state"),
    "--report-to": dict(nargs="+", help="accelerate trackers: tensorboard, wandb, ..."),
    "--no-progress": dict(action="store_false", dest="progress", help="no progress bar"),
    "--quiet": dict(action="store_true", help="no loss lines on stdout"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true", help="rebuild the embedded tiny models (all stages, seeded)")
    parser.add_argument("--recipe", help="named hyper-parameters: " + ", ".join(_recipe_names()))
    parser.add_argument("--plan", action="store_true", help="print the recipe's per-GPU memory and whether it fits")
    parser.add_argument("--gpus", type=int, help="--plan: GPUs (default: the recipe's)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="--plan: memory per GPU, GB (1e9 bytes)")
    parser.add_argument("--config-path", metavar="NAME", help="print the path of a shipped accelerate config file")
    for flag, keywords in FLAGS.items():
        parser.add_argument(flag, default=argparse.SUPPRESS, **keywords)


def _recipe_names() -> list[str]:
    from .recipes import RECIPES

    return list(RECIPES)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults <- the recipe's values <- the flags given."""
    from .recipes import get_recipe

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    values = {"stage": get_recipe(args.recipe).stage, **get_recipe(args.recipe).values} if args.recipe else {}
    values.update(given)
    if "report_to" in values:
        values["report_to"] = tuple(values["report_to"])
    starts = {"model", "llm", "vision_tower"}  # a checkpoint, or LLaVA's parts (checked by TrainConfig)
    missing = [
        name
        for name in ("stage", "model", "data", "output_dir")
        if name not in values and not (name == "model" and starts & set(values))
    ]
    if missing:
        raise UsageError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing) + " (or use --demo)")
    return TrainConfig(**values)


def main(args: argparse.Namespace) -> int:
    if args.demo:
        from ..demo.build import build

        build()
        return 0
    if args.config_path:
        from .recipes import accelerate_config_path

        print(accelerate_config_path(args.config_path))
        return 0
    if args.plan:
        from .planner import plan_recipe

        if not args.recipe:
            raise UsageError("--plan needs --recipe NAME")
        print(plan_recipe(args.recipe, args.gpus, args.gpu_memory_gb).render())
        return 0
    from .loop import train

    train(config_from_args(args))
    return 0


def run_cli(argv: list[str] | None = None) -> int:
    """`python -m vistog_bench.train ...` (under `accelerate launch` / `torchrun`): `vistog-bench train`, with its
    one-line errors and exit codes (2 bad input, 3 a full disk)."""
    from ..cli import main as vistog_bench

    return vistog_bench(["train", *(sys.argv[1:] if argv is None else argv)])
