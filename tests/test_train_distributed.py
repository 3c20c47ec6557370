"""Two processes on CPU through `torchrun --nproc_per_node 2` over gloo: DDP (accelerate's MULTI_CPU) and FSDP2
(accelerate's FSDP path, the shipped fsdp2.yaml's settings) train, save a checkpoint that is served, and 2 x batch B
gives one process's batch-2B losses; FSDP2 really shards (rank 0 holds about half of the parameters); an FSDP
version accelerate cannot apply on CPUs is refused in one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_loop import write_single_word_data

from vistog_bench.demo.build import write_fresh_model
from vistog_bench.train.configs import fsdp_launch_env

TINY_LLAVA = Path(__file__).resolve().parents[1] / "vistog_bench" / "demo" / "checkpoints" / "tiny-llava"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS, LR = 3, 3e-3  # every run of these tests: a few Adam steps


def train_args(fresh, data, out, batch_size: int) -> list[str]:
    return [
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
        "--batch-size",
        str(batch_size),
        "--max-steps",
        str(STEPS),
        "--lr",
        str(LR),
        "--warmup-ratio",
        "0",
        "--log-every",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--no-progress",
    ]


def run(command: list[str], env=None) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env or ENV, capture_output=True, text=True, timeout=600)


def log_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


def losses_and_rates(out) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"]) for r in log_of(out) if "of" in r]


def serve_one_sample(folder, method: str = "none") -> str:
    """The folder loaded by the lmms-eval adapter (`vistog-bench run`'s model) and one image question answered."""
    from lmms_eval.api.instance import GenerationResult, Instance

    from vistog_bench.adapter import VisToGLMM
    from vistog_bench.testing.tiny_models import random_images

    lm = VisToGLMM(pretrained=str(folder), method=method, device="cpu", dtype="float32")
    lm.task_dict = {"toy": {"test": [{"image": random_images(1, seed=3)[0]}]}}
    request = Instance(
        request_type="generate_until",
        idx=0,
        metadata={"task": "toy", "doc_id": 0, "repeats": 1},
        arguments=(
            "What colour is the shape?",
            {"max_new_tokens": 3, "temperature": 0},
            lambda doc: [doc["image"]],
            0,
            "toy",
            "test",
        ),
    )
    [answer] = lm.generate_until([request])
    assert isinstance(answer, GenerationResult) and answer.token_counts.output_tokens > 0
    assert "failure" not in lm.take_sample_log()[0]
    return answer.text


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
    both = [losses_and_rates(out) for out in (ddp, single)]
    assert [s for s, _, _ in both[0]] == [1, 2, 3] and [lr for *_, lr in both[0]] == [lr for *_, lr in both[1]]
    assert np.allclose([loss for _, loss, _ in both[0]], [loss for _, loss, _ in both[1]], atol=2e-4)

    serve_one_sample(ddp)


@pytest.mark.slow
def test_fsdp2_two_processes_shard_train_save_and_serve(tmp_path):
    fresh, data = write_fresh_model(tmp_path / "fresh"), write_single_word_data(tmp_path / "data", 12)
    fsdp, resumed, single = tmp_path / "fsdp", tmp_path / "resumed", tmp_path / "single"
    launch = [*TORCHRUN, "--master_port", str(free_port())]
    result = run([*launch, *train_args(fresh, data, fsdp, 2), "--save-steps", "2"], {**ENV, **fsdp_launch_env()})
    assert result.returncode == 0, result.stderr[-3000:]
    # the resumable state at step 2 is sharded (every rank writes its own shards, checkpoints.py); resumed, the run
    # ends as the uninterrupted one did
    state = fsdp / "checkpoints" / "checkpoint_0"
    assert json.loads((state / "checkpoint.json").read_text())["sharded"]
    assert all((state / f"process_{rank}.safetensors").is_file() for rank in (0, 1))
    shutil.copytree(fsdp / "checkpoints", resumed / "checkpoints")
    resume = [*train_args(fresh, data, resumed, 2), "--save-steps", "2", "--resume-from-checkpoint", "latest"]
    result = run([*launch, *resume], {**ENV, **fsdp_launch_env()})
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses_and_rates(resumed) == losses_and_rates(fsdp)
    result = run([sys.executable, *train_args(fresh, data, single, 4)])
    assert result.returncode == 0, result.stderr[-3000:]
    start, summary = log_of(fsdp)[0], log_of(fsdp)[-1]
    assert summary["processes"] == 2 and summary["distributed_type"] == "FSDP"
    assert summary["llm_compute_dtype"] == "float32"  # no mixed precision asked: the policy leaves float32
    # fully_shard splits every parameter on dim 0 over the 2 ranks (rank 0 takes the larger half of an odd size)
    assert start["parameters_held"] < start["parameters"] and 2 * start["parameters_held"] >= start["parameters"]
    assert log_of(single)[0]["parameters_held"] == log_of(single)[0]["parameters"]
    # FSDP's gradients are reduce-scattered means over the ranks: the same step as one process at twice the batch
    both = [losses_and_rates(out) for out in (fsdp, single)]
    assert [s for s, _, _ in both[0]] == [1, 2, 3] and [lr for *_, lr in both[0]] == [lr for *_, lr in both[1]]
    assert np.allclose([loss for _, loss, _ in both[0]], [loss for _, loss, _ in both[1]], atol=2e-4)
    # the saved folder holds the full (gathered) weights: what one process trained, up to float noise
    from vistog_bench.model import load_checkpoint

    gathered, again, alone = (load_checkpoint(out)[0].state_dict() for out in (fsdp, resumed, single))
    assert gathered.keys() == alone.keys() == again.keys()
    # How far may they differ? The two runs reduce the same gradients in another order (gloo's reduce-scatter of two
    # half-batch means vs one process's sum): float32 rounding, relative ~ n * 2^-24 <= 1e-4 for the <= 10^3 terms of
    # these sums. Adam's step lr * m / (sqrt(v) + eps) is insensitive to a relative error of the gradient wherever
    # |g| >> eps, so those weights agree to about 3 steps * lr * 1e-4 ~ 1e-6. Only where a gradient is itself at the
    # rounding level (|g| ~ eps = 1e-8, or its sign decided by rounding) does Adam amplify the noise, up to its full
    # step: such weights are rare (19 of 709,760 on the first machines measured) and never move more than their
    # 3 steps of at most lr each, in opposite directions.
    well_conditioned = 1e-6
    differences = torch.cat([(gathered[k] - alone[k]).abs().flatten() for k in alone])
    assert differences.max().item() <= 2 * STEPS * LR
    assert (differences > well_conditioned).float().mean().item() < 1e-4
    assert all(torch.equal(gathered[k], again[k]) for k in gathered)
    serve_one_sample(fsdp)


@pytest.mark.slow
def test_fsdp2_two_processes_train_vistog_stage1_and_serve(tmp_path):
    """VisToG's stage 1 under FSDP2: the LLM's decoder layers are the shard units and the vision tower (whose layers
    VisToG runs through its own layer forward) is in the root unit; the [1] grouping scale shards like any weight;
    the run learns and its saved VisToG folder serves method vistog. (Its losses are not one process's at twice the
    batch: the training assignment draws Gumbel noise, and two processes draw other noise than one.)"""
    data = write_single_word_data(tmp_path / "data", 12)
    fsdp = tmp_path / "fsdp"

    def vistog_args(out, batch_size):
        args = train_args(TINY_LLAVA, data, out, batch_size)
        args[args.index("llava")] = "vistog-stage1"
        return [*args, "--num-semantic-tokens", "4"]

    result = run([*TORCHRUN, "--master_port", str(free_port()), *vistog_args(fsdp, 2)], {**ENV, **fsdp_launch_env()})
    assert result.returncode == 0, result.stderr[-3000:]
    start, summary = log_of(fsdp)[0], log_of(fsdp)[-1]
    assert summary["distributed_type"] == "FSDP" and start["parameters_held"] < start["parameters"]
    assert summary["last_loss"] < summary["first_loss"]  # stage 1 learns
    serve_one_sample(fsdp, method="vistog")


@pytest.mark.slow
def test_fsdp2_mixed_precision_reaches_its_policy(tmp_path):
    """--mixed-precision bf16 under FSDP2 on CPU: FSDP2's MixedPrecisionPolicy computes in bf16 (the LLM's decoder
    layers return bf16 hidden states), the saved weights are the fp32 masters. (The loss itself is no witness: with
    accelerate 1.15 it came out of bf16 autocast, with 1.16 transformers' loss upcasts bf16 logits to float32.)"""
    fresh, data = write_fresh_model(tmp_path / "fresh"), write_single_word_data(tmp_path / "data", 4)
    out = tmp_path / "bf16"
    command = [*TORCHRUN, "--master_port", str(free_port()), *train_args(fresh, data, out, 2)]
    result = run([*command, "--mixed-precision", "bf16"], {**ENV, **fsdp_launch_env()})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = log_of(out)[-1]
    losses = [summary["first_loss"], summary["last_loss"]]
    assert summary["distributed_type"] == "FSDP"
    assert summary["mixed_precision"] == "bf16" and summary["llm_compute_dtype"] == "bfloat16"
    assert all(math.isfinite(loss) for loss in losses)
    from safetensors.torch import load_file

    assert {w.dtype for w in load_file(out / "model.safetensors").values()} == {torch.float32}


@pytest.mark.slow
def test_fsdp1_on_cpu_is_refused_in_one_line(tmp_path):
    fresh, data = write_fresh_model(tmp_path / "fresh"), write_single_word_data(tmp_path / "data", 4)
    env = {**ENV, **fsdp_launch_env(), "FSDP_VERSION": "1"}  # accelerate applies FSDP version 1 on accelerators only
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


def test_fsdp_launch_env_is_what_accelerate_launch_exports():
    """fsdp_launch_env agrees with accelerate's own launcher on every variable it sets (the rest are its defaults)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from vistog_bench.train.recipes import accelerate_config_path

    args = launch_command_parser().parse_args(["--config_file", str(accelerate_config_path("fsdp2.yaml")), "x.py"])
    exported = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    ours = fsdp_launch_env()
    assert {k: exported.get(k) for k in ours} == ours and ours["FSDP_VERSION"] == "2"
