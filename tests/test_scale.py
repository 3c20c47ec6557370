"""Sweeps split into cells run by worker processes (run/plan.py, run/local.py): the plan and its ids, the worker
entry, the local launcher, a worker killed mid-cell, resume, the deterministic merge, `status`. Every sweep here is
the embedded default on shapes_vqa, --limit 2, as real processes (`python -m vistog_bench`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vistog_bench.cli import main
from vistog_bench.results import CellResult, RunDir
from vistog_bench.run.plan import CELL_START

SWEEP = ["run", "--tasks", "shapes_vqa", "--limit", "2", "--no-report"]
PER_PROCESS = ("elapsed_s", "hardware", "launcher", "worker")  # who ran a cell and how long: not its answers
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def vistog_bench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vistog_bench", *args], env=ENV, capture_output=True, text=True, **kwargs
    )


def only_run(folder: Path) -> Path:
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    return run


def answers(run: Path) -> tuple[dict, dict]:
    """Each cell's record without its per-process fields (by key), and every sample log's text."""
    cells = {
        (c["task"], c["method"], c["budget"]): {k: v for k, v in c.items() if k not in PER_PROCESS}
        for c in json.loads((run / "metrics.json").read_text())
    }
    return cells, {p.name: p.read_text() for p in sorted((run / "samples").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    done = vistog_bench(*SWEEP, "--output", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return only_run(out)


def plan_ids(capsys, *extra: str) -> list[str]:
    assert main([*SWEEP, "--dry-run", *extra]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "cell" not in line]
    return [line.split("|")[1].strip() for line in lines]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    ids = plan_ids(capsys, "--output", str(tmp_path))
    assert len(ids) == 3 and len(set(ids)) == 3  # none@64, vistog@16, vistog@4
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)
    assert list(tmp_path.iterdir()) == []  # nothing written, no run folder
    assert plan_ids(capsys, "--output", str(tmp_path / "elsewhere")) == ids  # the output folder is not in the id
    assert set(plan_ids(capsys, "--seed", "1")).isdisjoint(ids)  # what changes answers changes every id


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--launcher", "nowhere"], "unknown launcher"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--detach"], "--detach needs a batch launcher"),
        (["--launcher", "local", "--detach"], "--detach needs a batch launcher"),
        (["--cells", "0123456789ab"], "not a cell of this plan"),
    ],
)
def test_bad_launch_input_is_one_line_exit_2(tmp_path, capsys, extra, words):
    assert main([*SWEEP, "--output", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not any(tmp_path.iterdir())


def test_two_local_workers_answer_as_one_process(tmp_path, one_process):
    done = vistog_bench(*SWEEP, "--output", str(tmp_path), "--launcher", "local", "--workers", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    run = only_run(tmp_path)
    assert answers(run) == answers(one_process)
    cells = json.loads((run / "metrics.json").read_text())
    assert {c["launcher"] for c in cells} == {"local"} and {c["worker"] for c in cells} <= {"0", "1"}
    assert all(c["hardware"]["device"] == "cpu" and c["hardware"]["threads"] == 1 for c in cells)
    # two long-lived workers, one process each, shared the three cells (each cell started once)
    logs = [(run / "workers" / f"{slot}.log").read_text() for slot in (0, 1)]
    assert [log.count(f"== worker {slot} started") for slot, log in enumerate(logs)] == [1, 1]
    assert sorted(line.split()[-1] for log in logs for line in log.splitlines() if line.startswith(CELL_START)) == (
        sorted(c["cell_id"] for c in cells)
    )
    # profile lines: one run-wide file merged from the cells', as many request records as the one-process run's
    assert len((run / "profile.jsonl").read_text().splitlines()) == len(
        (one_process / "profile.jsonl").read_text().splitlines()
    )
    status = vistog_bench("status", str(run))
    assert status.returncode == 0 and status.stdout.count("| ok ") == 3 and "3 ok" in status.stdout


def _wait_for_pid(run_parent: Path, cell: str, attempt: int, proc: subprocess.Popen) -> int:
    """The pid of `cell`'s worker on `attempt`, read from the coordinator's launch.json as soon as it is there."""
    for _ in range(3000):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        for launch in run_parent.glob("*/launch.json"):
            try:
                entry = next(c for c in json.loads(launch.read_text())["cells"] if c["cell_id"] == cell)
            except (json.JSONDecodeError, StopIteration):
                continue
            if entry.get("state") == "running" and entry.get("attempts") == attempt:
                return entry["pid"]
        time.sleep(0.05)
    raise AssertionError("the worker never started")


def test_killed_worker_costs_only_its_cell_and_resume_completes(tmp_path, capsys, one_process):
    killed = plan_ids(capsys)[0]  # none@64, the first cell started
    proc = subprocess.Popen(
        [sys.executable, "-m", "vistog_bench", *SWEEP, "--output", str(tmp_path), "--launcher", "local"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for attempt in (1, 2):  # --retries 1 (default): the cell is started twice, then recorded failed
        os.kill(_wait_for_pid(tmp_path, killed, attempt, proc), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    run = only_run(tmp_path)
    cells = {c.cell_id: c for c in RunDir(run).cells()}
    assert cells[killed].status.startswith("failed: worker died (signal SIGKILL) on each of 2 attempt(s)")
    assert [c.ok for i, c in cells.items() if i != killed] == [True, True]  # the other cells finished, kept
    kept = {
        n: (run / "samples" / n).read_text() for n in ("shapes_vqa__vistog__16.jsonl", "shapes_vqa__vistog__4.jsonl")
    }
    status = vistog_bench("status", str(run))
    assert "| failed " in status.stdout and "signal SIGKILL" in status.stdout

    resumed = vistog_bench("run", "--resume", str(run), "--launcher", "local", "--workers", "2", "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert answers(run) == answers(one_process)
    assert all((run / "samples" / n).read_text() == text for n, text in kept.items())  # finished work not redone


def test_merge_is_the_same_bytes_whatever_order_cells_finish(tmp_path):
    def cell(task: str, budget: int) -> CellResult:
        return CellResult(task, "tome", budget, "ok", metrics={"exact_match,none": budget / 100}, n_samples=2)

    plan = [("tome__16__a", 0, "a", [cell("t1", 16), cell("t2", 16)]), ("tome__4__b", 1, "b", [cell("t1", 4)])]
    texts = []
    for order in (plan, plan[::-1]):
        run = RunDir(tmp_path / str(len(texts)))
        for stem, index, cell_id, results in order:
            for result in results:
                run.record_plan_cell(stem, index, cell_id, result)
        run.merge()
        texts.append((run.path / "metrics.json").read_bytes())
    assert texts[0] == texts[1]
    assert [c.budget for c in RunDir(tmp_path / "0").cells()] == [16, 16, 4]  # plan order, not finishing order


def test_status_shows_a_cell_run_again_not_its_earlier_failure(tmp_path):
    """A resumed run's cell whose last attempt failed is `running` while its coordinator (holding the run's lock)
    runs it again, the failure named as the earlier one; with no coordinator left, the records decide."""
    from vistog_bench.run.plan import PlannedCell, write_launch
    from vistog_bench.run.status import status_rows
    from vistog_bench.run.sweep import Cell

    run = RunDir(tmp_path)
    planned = PlannedCell(0, Cell("tome", 16, "/ckpt"), ("t1",), "a" * 12)
    run.record_plan_cell(planned.stem, 0, planned.cell_id, CellResult("t1", "tome", 16, "failed: out of disk"))
    write_launch(run, "local", 1, [planned], {planned.cell_id: {"state": "running", "worker": "0", "pid": 1}})
    with run.lock():  # the coordinator of the resumed run
        (row,) = status_rows(run)
        assert row[1] == "running" and row[-1] == "run again after: failed: out of disk"
    (row,) = status_rows(run)
    assert row[1] == "failed" and row[-1] == "failed: out of disk"
