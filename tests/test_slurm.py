"""`run --launcher slurm` on a real one-node SLURM cluster (tests/slurm_cluster.py: Debian's slurmctld, slurmd and
munge started on localhost): a six-cell sweep of the embedded default whose job is preempted mid-cell and requeued,
a detached sweep followed by `status`, a cancelled job, the job that ends the run and `--resume`, and the bad input
refused before anything is submitted. Every sweep is shapes_vqa with --limit 2, compared with the same sweep run in
one process; cells run as CPU cells (--gpus-per-cell 0), one thread each."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import missing_binaries, shared_cluster
from test_scale import ENV, answers, only_run

from vistog_bench.cli import main
from vistog_bench.run.slurm import _expand_array, _gpus, slurm_minutes

# six cells: none@64 (the reference), vistog@16 (the committed 16-token checkpoint) and four reducers at 16
SIX = ["run", "--tasks", "shapes_vqa", "--limit", "2", "--method", "vistog,pool,tome,random,visionzip"]
SIX += ["--budgets", "16", "--no-report"]
TWO = ["run", "--tasks", "shapes_vqa", "--limit", "2", "--method", "pool", "--budgets", "16"]  # none@64, pool@16
CPU_CELLS = ["--launcher", "slurm", "--gpus-per-cell", "0", "--slurm-time", "30"]
WAIT_S = 420  # the longest wait for a sweep here: six cells of ~20 s each (torch and lmms-eval import) on 2 cores


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"SLURM is not installed here ({', '.join(missing)} missing); .ci/run installs slurmctld, slurmd, "
            "slurm-client and munge from Debian"
        )
    # pytest-xdist workers of one session share the parent of their temporary roots, and one cluster
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    with shared_cluster(shared) as started:
        yield started


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The six cells in one process: the answers every SLURM sweep here must give."""
    out = tmp_path_factory.mktemp("one")
    done = subprocess.run(
        [sys.executable, "-m", "vistog_bench", *SIX, "--output", str(out)], env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return only_run(out)


def vistog_bench(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vistog_bench", *args], env=cluster.env(ENV), capture_output=True, text=True
    )


def wait_for(what: str, check, timeout_s: float = WAIT_S):
    """check()'s first truthy value, polled; fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}"
        time.sleep(0.5)
    return value


def launch_record(out: Path) -> dict | None:
    found = list(out.glob("*/launch.json"))
    return json.loads(found[0].read_text()) if found else None


def started(cell: dict, start: int) -> int | None:
    """The pid of the worker running the cell's job's `start`-th run of the worker entry, once it has begun (CellJob
    prints it once submitit's signal handler is in place, before the worker loads anything)."""
    log = Path(cell["log"])
    found = re.search(rf"start {start} \(pid (\d+)\): ", log.read_text()) if log.is_file() else None
    return int(found.group(1)) if found else None


def recorded(run: Path, cell: dict) -> bool:
    return (run / "cells" / cell["stem"] / "result.json").is_file()


def status(capsys, run: Path) -> dict[str, list[str]]:
    """`vistog-bench status RUN` (SLURM's configuration from $SLURM_CONF), as cell id -> [state, method, worker, job,
    log, reason]."""
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    table = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    return {row[0].strip(): [c.strip() for c in row[1:]] for row in table[2:]}  # after the header and its rule


def same_answers(run: Path, reference: Path) -> None:
    """The run's cells and sample logs equal the reference's for the same cells (timings and who ran them aside)."""
    cells, samples = answers(run)
    reference_cells, reference_samples = answers(reference)
    assert cells == {key: reference_cells[key] for key in cells}
    assert samples == {name: reference_samples[name] for name in samples}


@pytest.mark.slow
def test_six_cells_through_slurm_with_a_job_preempted_mid_cell_equal_one_process(
    cluster, tmp_path, one_process, capsys, monkeypatch
):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    out = tmp_path / "slurm"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "vistog_bench", *SIX, *CPU_CELLS, "--max-parallel", "2", "--output", str(out)],
        env=cluster.env(ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        record = wait_for("the launch record", lambda: launch_record(out))
        run = only_run(out)
        assert record["launcher"] == "slurm" and len(record["cells"]) == 6
        preempted = record["cells"][0]  # none@64: the first array task, running at once
        wait_for("the first job to start its cell", lambda: started(preempted, 1))
        assert not recorded(run, preempted)  # mid-cell: the worker is still loading
        # what SLURM sends a job it preempts (submitit's signal): the job checkpoints, requeues itself and exits
        cluster.run("scancel", "--signal=USR2", preempted["job_id"])
        stdout, stderr = coordinator.communicate(timeout=WAIT_S)
    finally:
        coordinator.kill()
    assert coordinator.returncode == 0, stderr[-3000:]
    log = Path(preempted["log"]).read_text()
    # requeued and its cell run again (SLURM may deliver the signal once more to the requeued job: a later start)
    assert "this job is preempted" in log and "Requeued job" in log and re.search(r"start [2-9]\d* \(pid", log)
    same_answers(run, one_process)
    cells = json.loads((run / "metrics.json").read_text())
    assert len(cells) == 6 and {c["launcher"] for c in cells} == {"slurm"}
    assert {c["worker"] for c in cells} == {c["job_id"] for c in json.loads((run / "launch.json").read_text())["cells"]}
    final = status(capsys, run)
    assert [row[0] for row in final.values()] == ["ok"] * 6


@pytest.mark.slow
def test_detached_sweep_status_a_killed_worker_and_resume(cluster, tmp_path, one_process, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    out = tmp_path / "detached"
    done = vistog_bench(cluster, *TWO, *CPU_CELLS, "--max-parallel", "1", "--detach", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(out)
    assert f"vistog-bench status {run}" in done.stdout
    first, second = launch_record(out)["cells"]
    shown = status(capsys, run)
    # the throttle holds the second array task back while the first is out; each names its job and log
    assert shown[second["cell_id"]][:4] == ["queued", "pool@16", second["job_id"], second["job_id"]]
    assert shown[first["cell_id"]][0] in ("queued", "running") and shown[first["cell_id"]][4] == first["log"]
    worker = wait_for("the first job to start its cell", lambda: started(first, 1))
    # the job's Python killed mid-cell (as the kernel's OOM killer or a crash would): no requeue, the cell is lost
    # (`scancel` would do it after KillWait, SIGTERM being left to submitit's own use)
    os.kill(worker, signal.SIGKILL)
    # while the array is out, its cells are not submitted again
    assert main(["run", "--resume", str(run), "--launcher", "slurm"]) == 2
    assert "SLURM still runs or queues its job(s)" in capsys.readouterr().err
    finisher_id = re.search(r"SLURM job (\d+) merges the run", done.stderr).group(1)
    finisher = run / "slurm" / f"{finisher_id}_0_log.out"
    wait_for("the job after the array", lambda: finisher.is_file() and "Job completed" in finisher.read_text())
    assert json.loads((run / "manifest.json").read_text())["finished_at"]
    shown = status(capsys, run)
    state, *_, reason = shown[first["cell_id"]]
    assert state == "failed" and f"job {first['job_id']} ended FAILED" in reason and first["log"] in reason
    assert shown[second["cell_id"]][0] == "ok"
    assert (run / "report").is_dir()  # written by the job after the array
    cells = {c["method"]: c for c in json.loads((run / "metrics.json").read_text())}
    assert cells["none"]["status"].startswith("failed") and cells["pool"]["status"] == "ok"

    resumed = vistog_bench(cluster, "run", "--resume", str(run), "--launcher", "slurm", "--slurm-time", "30")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 cell(s) submitted" in resumed.stderr  # only the lost cell ran again
    same_answers(run, one_process)
    assert [row[0] for row in status(capsys, run).values()] == ["ok", "ok"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--launcher", "slurm", "--slurm-partition", "nowhere"], "--slurm-partition nowhere: no such partition"),
        (["--launcher", "slurm"], "--gpus-per-cell 1: no node of partition debug has that many GPUs"),
        (["--launcher", "slurm", "--device", "cuda", "--gpus-per-cell", "0"], "CUDA cells need a GPU each"),
        (["--launcher", "slurm", "--gpus-per-cell", "0", "--slurm-option", "time=5"], "set by --slurm-time"),
        (["--launcher", "slurm", "--gpus-per-cell", "0", "--slurm-time", "soon"], "not a SLURM time"),
        (["--launcher", "slurm", "--max-parallel", "0"], "--max-parallel must be at least 1"),
        (["--slurm-partition", "debug"], "--slurm-partition is an option of --launcher slurm"),
        (["--launcher", "local", "--gpus-per-cell", "1"], "--gpus-per-cell is an option of --launcher slurm"),
    ],
)
def test_bad_slurm_input_is_one_line_exit_2_before_anything(cluster, tmp_path, capsys, monkeypatch, extra, words):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    queued = cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    assert main([*TWO, "--output", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert list(tmp_path.iterdir()) == []  # no run folder
    assert set(cluster.run("squeue", "-h", "-o", "%i").stdout.split()) <= set(queued)  # nothing submitted


def test_unreachable_slurm_is_one_line_exit_2(cluster, tmp_path, capsys, monkeypatch):
    # the cluster's configuration with its controller on a port nobody listens on (and a short message timeout)
    conf = cluster.conf.read_text().splitlines()
    conf = [line for line in conf if not line.startswith(("SlurmctldPort=", "MessageTimeout="))]
    dead = tmp_path / "slurm.conf"
    dead.write_text("\n".join([*conf, "SlurmctldPort=1", "MessageTimeout=2", ""]))
    monkeypatch.setenv("SLURM_CONF", str(dead))
    out = tmp_path / "out"
    assert main([*TWO, "--output", str(out), *CPU_CELLS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SLURM is not reachable: sinfo failed" in err[0], err
    assert not out.exists()


def test_slurm_not_installed_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo on it
    assert main([*TWO, "--output", str(tmp_path / "out"), *CPU_CELLS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sinfo is not installed" in err[0], err


def test_slurm_formats():
    # sbatch(1) --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours", "days-hours:minutes",
    # "days-hours:minutes:seconds"; sinfo's %l prints "infinite" for no limit
    assert [slurm_minutes(t) for t in ("30", "1:30", "2:00:00", "1-0", "1-2:30", "1-0:0:30")] == [
        30,
        2,
        120,
        1440,
        1590,
        1441,
    ]
    assert slurm_minutes("infinite") is None
    # a node's GRES as sinfo's %G prints it (gres.conf(5): name[:type]:count, sockets in brackets)
    assert [_gpus(g) for g in ("(null)", "gpu:8", "gpu:a100:4(S:0-1)", "gpu:2,mps:200", "gpu:h100:4(S:0,1)")] == [
        0,
        8,
        4,
        2,
        4,
    ]
    # squeue(1) %i of array tasks not yet split off: "<array>_[<ranges>%<throttle>]"
    assert _expand_array("12_[3-5,7%2]") == ["12_3", "12_4", "12_5", "12_7"]
    assert _expand_array("12_4") == ["12_4"]
