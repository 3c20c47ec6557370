"""Data parallel inside one cell (run/ranks.py): `torchrun --nproc_per_node 2 -m vistog_bench run ...` (the in-process
sweep and the worker entry a SLURM cell's K tasks run) and lmms-eval's own `torchrun -m lmms_eval eval --model
vistog`: every rank on its own device, lmms-eval splits the samples, every sample evaluated once, one run folder whose
metrics and sample answers equal a one-process run. Real torchrun (torch.distributed.run, gloo on CPU), real
lmms-eval, the embedded tiny checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_nothing_lost import _png_bytes
from test_runner_robust import image_task
from test_scale import PER_PROCESS, answers, only_run
from testers import random_images

from vistog_bench.cli import main
from vistog_bench.run.ranks import Ranks, ranks_from_env

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SWEEP = ["run", "--limit", "5", "--no-report"]  # 5 samples over 2 ranks: lmms-eval pads rank 1 with one request


def torchrun(*args: str, module: str = "vistog_bench", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m MODULE ARGS` (a free rendezvous port: tests run side by side)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, "-m", module, *args], env=ENV, capture_output=True, text=True, timeout=900, cwd=cwd
    )


def one_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vistog_bench", *args], env=ENV, capture_output=True, text=True, timeout=900
    )


def profile_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "profile.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def embedded_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The embedded default (image, caption and video tasks; 3 cells) in one process and in 2 ranks."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    alone = one_process(*SWEEP, "--output", str(one))
    assert alone.returncode == 0, alone.stderr[-3000:]
    ranks = torchrun(*SWEEP, "--output", str(two))
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert len(list(two.iterdir())) == 1  # one run folder, made by rank 0
    return only_run(one), only_run(two)


def test_two_ranks_answer_and_score_as_one_process(embedded_runs):
    one, two = embedded_runs
    cells_one, samples_one = answers(one)
    cells_two, samples_two = answers(two)
    assert len(cells_one) == 9  # 3 cells x 3 tasks
    assert cells_two == cells_one  # metric values, stderr, sample counts: scored as one process scores
    assert samples_two == samples_one  # every sample line, in one order, byte for byte
    records = json.loads((two / "metrics.json").read_text())
    assert {r["hardware"]["ranks"] for r in records} == {2}  # its timings compare only with 2-rank cells
    assert all("ranks" not in r["hardware"] for r in json.loads((one / "metrics.json").read_text()))


def test_each_sample_is_served_once_and_both_ranks_serve(embedded_runs):
    """One profile line per request served: 5 per task and cell as in one process, so the padding request lmms-eval
    gives rank 1 (5 = 3 + 2) ran nothing and no sample ran twice; rank 1 built and served its own share."""
    one, two = embedded_runs
    count = {}
    for line in profile_lines(two):
        count[(line["task"], line["method"], line["budget"])] = (
            count.get((line["task"], line["method"], line["budget"]), 0) + 1
        )
    assert set(count.values()) == {5} and len(count) == 9
    assert len(profile_lines(one)) == len(profile_lines(two))
    rank_log = (two / "run.rank1.log").read_text()
    assert "Building contexts for shapes_vqa on rank 1" in rank_log
    assert not list(two.glob("cells/*/run.rank1.log"))  # the in-process sweep keeps one log per rank


def test_a_worker_cell_in_two_ranks_equals_the_one_process_cell(embedded_runs, tmp_path, capsys):
    """The worker entry (what each task of a SLURM cell with --gpus-per-cell 2 runs) in 2 ranks: rank 0 writes the
    cell's folder, and its records equal the same cell of a one-process run."""
    one, _ = embedded_runs
    assert main([*SWEEP, "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "cell" not in line]
    ids = [row.split("|")[1].strip() for row in rows]
    done = torchrun(*SWEEP, "--output", str(tmp_path / "run"), "--cells", ids[1])
    assert done.returncode == 0, done.stderr[-3000:]
    (cell_dir,) = (tmp_path / "run" / "cells").iterdir()
    assert cell_dir.name.endswith(ids[1])
    assert {p.name for p in cell_dir.iterdir()} >= {"result.json", "run.log", "run.rank1.log", "profile.jsonl"}
    records = json.loads((cell_dir / "result.json").read_text())["records"]
    expected = [c for c in json.loads((one / "metrics.json").read_text()) if c["cell_id"] == ids[1]]
    strip = lambda cells: [{k: v for k, v in c.items() if k not in PER_PROCESS} for c in cells]  # noqa: E731
    assert strip(records) == strip(expected) and len(records) == 3


def test_a_failed_sample_is_replayed_as_failed_in_two_ranks(tmp_path):
    """A truncated PNG fails its sample alone in the rank that serves it; scored as one process, the sample line
    says why, and the cell equals the one-process cell."""
    whole = [_png_bytes(image) for image in random_images(5, size=24)]
    whole[3] = whole[3][: len(whole[3]) // 2]  # doc 3: rank 1's second sample
    tasks_dir = image_task(tmp_path, whole, ["red", "green", "blue", "red", "green"])
    from vistog_bench import demo

    sweep = [
        "run",
        "--model",
        str(demo.checkpoint_for_budget(None)),
        "--tasks",
        "user_images",
        "--method",
        "none",
        "--include-path",
        str(tasks_dir),
        "--no-report",
        "--no-profile",
    ]
    alone = one_process(*sweep, "--output", str(tmp_path / "one"))
    ranks = torchrun(*sweep, "--output", str(tmp_path / "two"))
    assert alone.returncode == ranks.returncode == 0, ranks.stderr[-3000:]
    (cells_one, samples_one), (cells_two, samples_two) = (answers(only_run(tmp_path / r)) for r in ("one", "two"))
    (cell_one,), (cell_two,) = cells_one.values(), cells_two.values()
    assert cell_two == cell_one and (cell_two["n_samples"], cell_two["n_failed"]) == (4, 1)
    assert samples_two == samples_one
    (text,) = samples_two.values()
    assert "image file is truncated" in text.splitlines()[-1]


def test_lmms_eval_own_torchrun_path_serves_each_sample_once_on_its_rank(tmp_path):
    """`torchrun -m lmms_eval eval --model vistog` (lmms-eval's data-parallel path, as under `accelerate launch`):
    the adapter serves on each rank, lmms-eval splits the documents and gathers them rank by rank; every document
    once, with the answers of one process."""
    from vistog_bench import demo
    from vistog_bench.run.tasks import PROJECT_TASKS

    checkpoint = demo.checkpoint_for_budget(16)
    demo.ensure_test_data()
    args = [
        "eval",
        "--model",
        "vistog",
        "--model_args",
        f"pretrained={checkpoint},budget=16,device=cpu",
        "--tasks",
        "shapes_vqa",
        "--limit",
        "5",
        "--include_path",
        str(PROJECT_TASKS),
        "--log_samples",
    ]
    alone = subprocess.run(
        [sys.executable, "-m", "lmms_eval", *args, "--output_path", str(tmp_path / "one")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    ranks = torchrun(*args, "--output_path", str(tmp_path / "two"), module="lmms_eval")
    assert alone.returncode == ranks.returncode == 0, ranks.stderr[-3000:]

    def logged(folder: Path) -> list[dict]:
        (path,) = folder.glob("*/*_samples_shapes_vqa.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]

    one, two = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert [s["doc_id"] for s in two] == [0, 2, 4, 1, 3]  # rank 0's documents, then rank 1's: split, each once
    by_doc = {s["doc_id"]: s["filtered_resps"] for s in one}
    assert {s["doc_id"]: s["filtered_resps"] for s in two} == by_doc


def test_ranks_from_the_launch_environment():
    assert ranks_from_env({}) == Ranks()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    ranks = ranks_from_env(env)
    assert (ranks.rank, ranks.local_rank, ranks.distributed, ranks.writes) == (3, 1, True, False)
    assert ranks.threads_each(8) == 4 and ranks.threads_each(1) == 1 and ranks.threads_each(None) is None
    assert ranks_from_env({"RANK": "0", "WORLD_SIZE": "2"}).local_world_size == 2  # no LOCAL_WORLD_SIZE: one node


@pytest.mark.parametrize(
    "env, words",
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "inconsistent launch environment"),
        ({"WORLD_SIZE": "two"}, "is not a number"),
    ],
)
def test_a_broken_launch_environment_is_one_line_exit_2(monkeypatch, capsys, env, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*SWEEP, "--tasks", "shapes_vqa", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_a_launcher_inside_a_data_parallel_launch_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main([*SWEEP, "--tasks", "shapes_vqa", "--output", str(tmp_path), "--launcher", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside a launch of 2 processes" in err[0]
    assert list(tmp_path.iterdir()) == []
