"""Two processes on CPU through `torchrun --nproc_per_node 2` (accelerate's MULTI_CPU over gloo): DDP trains, saves a
checkpoint that evaluates, and 2 x batch B gives one process's batch-2B losses; an FSDP config accelerate cannot
apply on CPUs is refused in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from vistog_bench.demo.build import write_fresh_model

from test_train_loop import write_single_word_data

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(fresh, data, out, batch_size: int) -> list[str]:
    return ["-m", "vistog_bench.train", "--stage", "llava", "--model", str(fresh), "--data", str(data),
            "--output-dir", str(out), "--batch-size", str(batch_size), "--max-steps", "3", "--lr", "3e-3",
            "--warmup-ratio", "0", "--log-every", "1", "--threads", "1", "--quiet", "--no-progress"]  # fmt: skip


def run(command: list[str], env=None) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env or ENV, capture_output=True, text=True, timeout=600)


def log_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_twice_the_batch(tmp_path):
    fresh, data = write_fresh_model(tmp_path / "fresh"), write_single_word_data(tmp_path / "data", 12)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = run([*TORCHRUN, "--master_port", str(free_port()), *train_args(fresh, data, ddp, 2)])
    assert result.returncode == 0, result.stderr[-3000:]
    result = run([sys.executable, *train_args(fresh, data, single, 4)])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = log_of(ddp)[-1]
    assert summary["processes"] == 2 and summary["distributed_type"] == "MULTI_CPU"
    # the same 4 samples per step, split 2 + 2; every sample trains the same number of tokens, so the mean of the
    # two processes' mean losses is the one-process mean and DDP's averaged gradient the one-process gradient
    both = [[(r["step"], r["loss"], r["lr"]) for r in log_of(out) if "of" in r] for out in (ddp, single)]
    assert [s for s, _, _ in both[0]] == [1, 2, 3] and [lr for *_, lr in both[0]] == [lr for *_, lr in both[1]]
    assert np.allclose([loss for _, loss, _ in both[0]], [loss for _, loss, _ in both[1]], atol=2e-4)

    from vistog_bench.adapter import VisToGLMM

    lm = VisToGLMM(pretrained=str(ddp), method="none", budget=64, device="cpu", dtype="float32")
    assert lm.model.num_visual_tokens == 64


@pytest.mark.slow
def test_fsdp_on_cpu_is_refused_in_one_line(tmp_path):
    fresh, data = write_fresh_model(tmp_path / "fresh"), write_single_word_data(tmp_path / "data", 4)
    env = {**ENV, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}  # what `accelerate launch` sets from fsdp2.yaml
    result = run([*TORCHRUN, "--master_port", str(free_port()), *train_args(fresh, data, tmp_path / "o", 2)], env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("vistog-bench train: error:")]
    assert lines and "asks for FSDP but accelerate set up MULTI_CPU on cpu" in lines[0]


def test_shipped_accelerate_configs_parse():
    """accelerate's own loader reads every shipped config into the engine its recipe expects."""
    from accelerate.commands.config.config_args import load_config_from_file

    from vistog_bench.train.recipes import RECIPES, accelerate_config_path

    expected = {"ddp.yaml": "MULTI_GPU", "fsdp2.yaml": "FSDP", "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED"}
    for name, kind in expected.items():
        config = load_config_from_file(str(accelerate_config_path(name)))
        assert config.distributed_type.value == kind and config.num_processes == 8, name
    assert load_config_from_file(str(accelerate_config_path("fsdp2.yaml"))).fsdp_config["fsdp_version"] == 2
    assert load_config_from_file(str(accelerate_config_path("zero3.yaml"))).deepspeed_config["zero_stage"] == 3
    assert {r.accelerate_config for r in RECIPES.values()} <= set(expected)
