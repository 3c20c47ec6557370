"""`--launcher local --workers N`: the cells of one sweep on one node, N worker processes at a time, each owning one
device (GPU k through CUDA_VISIBLE_DEVICES=k; on CPU the run's threads divided among them). Each worker is the worker
entry (`python -m vistog_bench run <the run's arguments> --output RUN --cells ID`) for one cell, so a worker that
dies costs only its cell: the cell is started again up to `--retries` times, then its missing tasks are recorded
failed with the reason (exit code or signal) and the sweep goes on. The coordinator (this process, holding the run's
lock) keeps `<run>/launch.json` current and merges the cells' records into metrics.json when the last one ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque

from ..results import CellKey, CellResult, RunDir, failed_status
from .plan import (
    FAILED,
    LAUNCHER_ENV,
    OK,
    QUEUED,
    RUNNING,
    WORKER_ENV,
    CellSink,
    PlannedCell,
    cell_state,
    write_launch,
)

POLL_S = 0.2  # how often the coordinator looks at its workers (a cell takes seconds at least)


def worker_arguments(config, run: RunDir, cell_ids: list[str], threads: int | None, device: str) -> list[str]:
    """`vistog-bench run` arguments that plan exactly `config`'s cells (ids equal) and run `cell_ids` into `run`."""
    args = ["run", "--model", *config.models, "--tasks", ",".join(config.tasks)]
    args += ["--method", ",".join(config.methods), "--budgets", ",".join(map(str, config.budgets))]
    args += ["--batch-size", str(config.batch_size), "--device", device, "--dtype", config.dtype]
    args += ["--max-frames", str(config.max_frames), "--seed", str(config.seed)]
    if config.limit is not None:
        args += ["--limit", str(config.limit)]
    if threads is not None:
        args += ["--threads", str(threads)]
    if config.chat_template:
        args += ["--chat-template", config.chat_template]
    if config.data_dir:
        args += ["--data-dir", config.data_dir]
    for path in config.include_paths:
        args += ["--include-path", path]
    if not config.profile:
        args.append("--no-profile")
    return [*args, "--no-report", "--output", str(run.path), "--cells", ",".join(cell_ids)]


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run_local(run: RunDir, config, planned: list[PlannedCell], launch) -> None:
    """Run the cells of `planned` not yet ok on `launch.workers` worker processes; returns when every cell has ended."""
    gpu = config.device.startswith("cuda")
    threads = None if gpu else max(1, (config.threads or 1) // launch.workers)
    done = {c.key: c for c in run.merged_cells()[0]}
    entries = {p.cell_id: {"state": OK} for p in planned if cell_state(p, done) == OK}
    queue = deque((p, 1) for p in planned if p.cell_id not in entries)
    free, running = list(range(launch.workers)), {}
    write_launch(run, "local", launch.workers, planned, entries)
    try:
        while queue or running:
            while queue and free:
                p, attempt = queue.popleft()
                slot = free.pop(0)
                running[slot] = (_start(run, config, p, slot, attempt, gpu, threads), p, attempt)
                entries[p.cell_id] = _entry(running[slot][0], p, slot, attempt, run)
                write_launch(run, "local", launch.workers, planned, entries)
            time.sleep(POLL_S)
            for slot, (proc, p, attempt) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[slot]
                free.append(slot)
                free.sort()
                state = cell_state(p, {c.key: c for c in run.merged_cells()[0]})
                entry = entries[p.cell_id]
                entry.update(exit_code=code)
                if state is not None:  # every task recorded by the worker itself
                    entry["state"] = state
                elif attempt <= launch.retries:
                    entry.update(state=QUEUED, reason=f"worker died ({_exit_reason(code)}), started again")
                    queue.append((p, attempt + 1))
                else:
                    reason = f"worker died ({_exit_reason(code)}) on each of {attempt} attempt(s); log: {entry['log']}"
                    _record_lost(run, p, reason, str(slot))
                    entry.update(state=FAILED, reason=reason)
                write_launch(run, "local", launch.workers, planned, entries)
    finally:
        for proc, _, _ in running.values():  # interrupted: no worker outlives its coordinator
            proc.terminate()
            proc.wait()


def _start(run: RunDir, config, p: PlannedCell, slot: int, attempt: int, gpu: bool, threads: int | None):
    env = {**os.environ, LAUNCHER_ENV: "local", WORKER_ENV: str(slot)}
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    else:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    args = worker_arguments(config, run, [p.cell_id], threads, "cuda" if gpu else config.device)
    log = _log_path(run, p)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        handle.write(f"== attempt {attempt}, worker {slot}\n".encode())
        handle.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "vistog_bench", *args], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


def _log_path(run: RunDir, p: PlannedCell):
    return run.cell_dir(p.stem) / "worker.log"


def _entry(proc, p: PlannedCell, slot: int, attempt: int, run: RunDir) -> dict:
    return {"state": RUNNING, "worker": str(slot), "pid": proc.pid, "attempts": attempt, "log": str(_log_path(run, p))}


def _record_lost(run: RunDir, p: PlannedCell, reason: str, worker: str, launcher: str = "local") -> None:
    """Record every task of `p` its workers left unrecorded as failed with `reason` (the workers are gone; SLURM's
    coordinator calls it too, with its `launcher`)."""
    stamp = {"launcher": launcher, "worker": worker, "hardware": None}  # no timings: nothing to compare
    sink = CellSink(run, p, stamp, shared=False)
    recorded = {c.key for c in run.merged_cells()[0]}
    with run.cell_lock(p.stem):
        for task in p.tasks:
            if CellKey(task, p.cell.method, p.cell.budget) not in recorded:
                sink.record(CellResult(task, p.cell.method, p.cell.budget, failed_status(reason)))
