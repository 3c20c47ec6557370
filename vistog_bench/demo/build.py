"""Rebuild the embedded tiny models from scratch, seeded: `python -m vistog_bench.demo.build` (or
`vistog-bench train --demo`).

    1. training data: the shapes world's train split in LLaVA's conversation format (+ region labels)
    2. a fresh tiny LLaVA: CLIP-shaped ViT (64 wide, 2 layers, 112 px, 14 px patches -> 64 patches) + Llama (128 wide,
       2 layers) + the word-level tokenizer and CLIP image processor
    3. `pretrain-vision`: the ViT learns per-region colour / shape / size (the tiny stand-in for CLIP)
    4. `llava`: projector + LLM on the frozen encoder, then end to end                  -> checkpoints/tiny-llava
    5. for each budget N: `vistog-stage1` then `vistog-stage2` from tiny-llava, vision frozen
       -> checkpoints/tiny-vistog-N (the budgets train side by side, one process and one thread each)

Every stage is the public trainer (`vistog_bench.train.train`) run with a TrainConfig from `STAGE_SETTINGS`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from . import CHECKPOINT_DIR, cache_dir, world

BUDGETS = (16, 4)
TRAIN_IMAGES = 12000
TRAIN_CLIPS = 3000
SEED = 0
THREADS = 1  # robust when the cores are shared: two threads stall at every barrier under contention
# One data-loader worker decodes the next batch's images on the second core while the first trains (8 % of a LLaVA
# step, 21 % of a pre-training step); the batches, hence the weights, are the same as without it. The VisToG budgets
# train side by side, so they already fill both cores and load their own data.
LOADER_WORKERS = 1
# step name -> (trainer stage, its TrainConfig settings). The LLaVA stage runs twice: projector + LLM on the frozen
# pre-trained encoder first, then end to end (the ViT is tiny; LLaVA-1.5 itself keeps CLIP frozen). VisToG keeps it
# frozen.
STAGE_SETTINGS = {
    "pretrain-vision": ("pretrain-vision", dict(max_steps=1200, batch_size=64, lr=1e-3, num_workers=LOADER_WORKERS)),
    "llava-frozen-vision": ("llava", dict(max_steps=700, batch_size=32, lr=5e-4, num_workers=LOADER_WORKERS)),
    "llava-end-to-end": (
        "llava",
        dict(max_steps=1200, batch_size=32, lr=3e-4, train_vision=True, num_workers=LOADER_WORKERS),
    ),
    "vistog-stage1": ("vistog-stage1", dict(max_steps=600, batch_size=32, lr=1e-3)),
    "vistog-stage2": ("vistog-stage2", dict(max_steps=900, batch_size=32, lr=3e-4)),
}


def tiny_llava_config(vocab_size: int, image_token_index: int, pad_token_id: int):
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=world.IMAGE_SIZE,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=64,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=vocab_size,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=pad_token_id,
            tie_word_embeddings=False,
        ),
        image_token_index=image_token_index,
        # two layers only: the last one is the feature layer (LLaVA-1.5 reads -2 of CLIP's 24)
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=pad_token_id,
    )


def write_fresh_model(folder: Path) -> Path:
    """config.json + processor files of the untrained tiny LLaVA (the trainer initialises it, seeded)."""
    from .processor import tiny_processor

    processor = tiny_processor(world.vocabulary(), world.IMAGE_SIZE, 14)
    tokenizer = processor.tokenizer
    config = tiny_llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def stage_config(step: str, model: Path, data: Path, output: Path, **overrides):
    from ..train import TrainConfig

    stage, settings = STAGE_SETTINGS[step]
    values = dict(model=str(model), data=str(data), output_dir=str(output), seed=SEED, threads=THREADS, progress=False)
    return TrainConfig(stage=stage, **{**values, **settings, **overrides})


def run_stage(step: str, model: Path, data: Path, output: Path, **overrides) -> Path:
    from ..train import train

    start = time.perf_counter()
    print(f"== {step}: {model} -> {output}", flush=True)
    train(stage_config(step, model, data, output, **overrides))
    print(f"== {step} done in {time.perf_counter() - start:.0f} s", flush=True)
    return output


def publish(source: Path, name: str) -> Path:
    """Copy weights, config and processor files (not the optimiser's leftovers) into checkpoints/<name>."""
    target = CHECKPOINT_DIR / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.suffix in (".json", ".safetensors", ".jinja") and file.name != "training_log.jsonl":
            shutil.copy2(file, target / file.name)
    return target


def build_vistog(budget: int, conversations: Path, work: Path) -> int:
    """VisToG stage 1 then stage 2 from the published tiny LLaVA at one budget -> checkpoints/tiny-vistog-<budget>."""
    stage1 = run_stage(
        "vistog-stage1",
        CHECKPOINT_DIR / "tiny-llava",
        conversations,
        work / f"vistog-{budget}-s1",
        num_semantic_tokens=budget,
    )
    run_stage("vistog-stage2", stage1, conversations, work / f"vistog-{budget}-s2")
    publish(work / f"vistog-{budget}-s2", f"tiny-vistog-{budget}")
    return budget


def build(
    work_dir: Path | None = None, budgets: tuple[int, ...] = BUDGETS, stages: tuple[str, ...] | None = None
) -> None:
    work = Path(work_dir) if work_dir else cache_dir() / "build"
    data_dir = work / "train-data"
    start = time.perf_counter()
    if not (data_dir / "conversations.json").is_file():
        print(f"== writing training data to {data_dir}", flush=True)
        world.write_llava_training_data(data_dir, "train", TRAIN_IMAGES, TRAIN_CLIPS, workers=os.cpu_count() or 1)
    conversations, regions = data_dir / "conversations.json", data_dir / "regions.json"
    wanted = stages or ("pretrain-vision", "llava", "vistog")
    if "pretrain-vision" in wanted:
        fresh = write_fresh_model(work / "fresh")
        run_stage("pretrain-vision", fresh, regions, work / "vision")
    if "llava" in wanted:
        run_stage("llava-frozen-vision", work / "vision", conversations, work / "llava")
        run_stage("llava-end-to-end", work / "llava", conversations, work / "llava-e2e")
        publish(work / "llava-e2e", "tiny-llava")
    if "vistog" in wanted:
        # the budgets are independent: one process each (one thread each, so the weights do not depend on how many
        # run side by side), as many at once as there are cores
        workers = max(1, min(len(budgets), os.cpu_count() or 1))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for budget in pool.map(build_vistog, budgets, [conversations] * len(budgets), [work] * len(budgets)):
                print(f"== published tiny-vistog-{budget}", flush=True)
    print(json.dumps({"build_s": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", help="intermediate checkpoints and training data (default: the cache)")
    parser.add_argument("--stages", nargs="+", choices=("pretrain-vision", "llava", "vistog"))
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    cli = parser.parse_args()
    build(cli.work_dir, tuple(cli.budgets), tuple(cli.stages) if cli.stages else None)
    sys.exit(0)
