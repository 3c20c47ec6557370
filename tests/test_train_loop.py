"""The training loop on one process: resume continues as if uninterrupted, gradient checkpointing keeps fewer
activations for backward and changes no loss, frozen parts get no optimizer state and are stored in the
mixed-precision dtype, the planner counts what torch holds."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vistog_bench.demo.build import write_fresh_model
from vistog_bench.model.loading import load_processor
from vistog_bench.model.prompting import PromptBuilder, find_template
from vistog_bench.train import TrainConfig, train
from vistog_bench.train.loop import build_dataset, make_optimizer
from vistog_bench.train.planner import ParameterCounts, count_parameters, model_states_bytes, plan_recipe
from vistog_bench.train.stages import load_for_stage

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WORDS = ("red", "green", "blue", "yellow", "purple", "circle", "square", "triangle")


def write_single_word_data(folder, count: int = 6):
    """Images with one question each and a one-word answer: every sample has the same number of trained tokens."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    records = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        records.append(
            {
                "id": str(i),
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                    {"from": "gpt", "value": WORDS[i % 8]},
                ],
            }
        )
    (folder / "data.json").write_text(json.dumps(records))
    return folder / "data.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    return write_fresh_model(root / "fresh"), write_single_word_data(root / "data")


def config(setup, output, **values) -> TrainConfig:
    fresh, data = setup
    base = dict(
        stage="llava",
        model=str(fresh),
        data=str(data),
        output_dir=str(output),
        batch_size=2,
        lr=3e-3,
        max_steps=4,
        warmup_ratio=0.25,
        log_every=1,
        seed=0,
        threads=1,
        quiet=True,
        progress=False,
    )
    return TrainConfig(**{**base, **values})


def loss_lines(output) -> list[tuple]:
    lines = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in lines if "of" in r]


def test_resume_continues_as_if_uninterrupted(setup, tmp_path):
    """4 steps straight (a state saved at step 2) vs that state resumed for the last 2: same weights, same loss lines.
    6 samples in batches of 2: step 4 is in the second epoch, so the data position crosses an epoch boundary."""
    straight = tmp_path / "straight"
    result = train(config(setup, straight, save_steps=2, save_total_limit=1))
    assert result.steps == 4 and [p.name for p in (straight / "checkpoints").iterdir()] == ["checkpoint_0"]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints", resumed / "checkpoints")  # what an interrupted run leaves behind
    train(config(setup, resumed, save_steps=2, save_total_limit=1, resume_from_checkpoint="latest"))
    assert loss_lines(resumed) == loss_lines(straight) and len(loss_lines(straight)) == 4
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    fresh_start = train(config(setup, tmp_path / "other", max_steps=4)).losses
    assert fresh_start[:2] == result.losses[:2]  # (same seed, same first steps: the comparison is not vacuous)


def train_measuring_saved_activations(cfg: TrainConfig) -> tuple[list[float], int]:
    """(losses, bytes autograd saved for backward outside checkpointed regions) of `train(cfg)`. torch's
    non-reentrant checkpoint saves a checkpointed layer's tensors through its own saved-tensor hooks (innermost
    wins), so the outer hooks here see only what is kept between forward and backward: with checkpointing on, a
    layer's input instead of all its intermediate activations."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        losses = train(cfg).losses
    return losses, sum(saved)


def test_gradient_checkpointing_keeps_fewer_activations_and_changes_no_loss(setup, tmp_path):
    """`--gradient-checkpointing` reaches the model: the activations kept for backward shrink (the LLM's layers keep
    their inputs only and recompute the rest in backward); the losses are the same."""
    from vistog_bench.train.cli import add_arguments, config_from_args

    plain, plain_bytes = train_measuring_saved_activations(config(setup, tmp_path / "plain", max_steps=2))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = [
        "--stage",
        "llava",
        "--model",
        str(setup[0]),
        "--data",
        str(setup[1]),
        "--output-dir",
        str(tmp_path / "ck"),
        "--batch-size",
        "2",
        "--lr",
        "3e-3",
        "--max-steps",
        "2",
        "--warmup-ratio",
        "0.25",
        "--log-every",
        "1",
        "--seed",
        "0",
        "--threads",
        "1",
        "--quiet",
        "--no-progress",
        "--gradient-checkpointing",
    ]
    recomputed, recomputed_bytes = train_measuring_saved_activations(config_from_args(parser.parse_args(flags)))
    assert recomputed_bytes < plain_bytes / 4  # measured: 1.9 MB vs 15.8 MB on the demo model
    assert np.allclose(plain, recomputed, rtol=1e-5)


def test_frozen_parameters_get_no_optimizer_state(setup, tmp_path):
    model = load_for_stage(config(setup, tmp_path, stage="llava", train_llm=False))  # LLaVA's alignment stage
    optimizer = make_optimizer(config(setup, tmp_path), model)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in trained}
    assert sum(p.numel() for p in trained) == sum(p.numel() for p in model.model.multi_modal_projector.parameters())


def test_mixed_precision_stores_frozen_parts_in_bf16(setup, tmp_path):
    out = tmp_path / "bf16"
    fresh, data = setup
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vistog_bench.train",
            "--stage",
            "llava",
            "--model",
            str(fresh),
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--mixed-precision",
            "bf16",
            "--threads",
            "1",
            "--quiet",
            "--no-progress",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    weights = load_file(out / "model.safetensors")
    vision = {w.dtype for k, w in weights.items() if "vision_tower" in k}
    trained = {w.dtype for k, w in weights.items() if "language_model" in k or "multi_modal_projector" in k}
    assert vision == {torch.bfloat16} and trained == {torch.float32}
    assert np.isfinite(
        [r["loss"] for r in map(json.loads, (out / "training_log.jsonl").read_text().splitlines()) if "of" in r]
    ).all()


def test_planner_counts_what_torch_holds(setup, tmp_path):
    """fp32 training on one process: the planner's parameter / gradient / optimizer bytes equal the real tensors'."""
    cfg = config(setup, tmp_path, stage="llava")
    model = load_for_stage(cfg)
    counts = count_parameters(model.config, "llava")
    processor = load_processor(cfg.model)
    prompts = PromptBuilder(find_template(processor, cfg.model), processor.tokenizer)
    dataset, module, collate = build_dataset(cfg, model, processor, prompts)
    batch = collate([dataset[0], dataset[1]])
    batch.pop("skipped")
    optimizer = make_optimizer(cfg, module)
    module(**batch).loss.backward()
    optimizer.step()
    params, grads, states = model_states_bytes(counts, gpus=1, zero_stage=0, mixed=False)
    assert params == sum(p.numel() * p.element_size() for p in model.parameters())
    assert grads == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    assert states == sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items() if k != "step"
    )
    sharded = model_states_bytes(ParameterCounts(counts.total, counts.trained, False), 4, 3, mixed=True)
    assert sharded == (2 * counts.total / 4, 2 * counts.trained / 4, 12 * counts.trained / 4)  # ZeRO-3, 4 GPUs


def test_planner_7b_stage2_on_8_gpus():
    small, large = plan_recipe("vistog-7b-stage2", 8, 40), plan_recipe("vistog-7b-stage2", 8, 80)
    assert not small.fits and large.fits and small.zero_stage == 3
    assert 6.9e9 < small.parameters_bytes * 8 / 2 < 7.2e9  # LLaVA-1.5-7B: about 7.06 B parameters
    assert small.activations_bytes < small.activations_without_checkpointing_bytes / 4
