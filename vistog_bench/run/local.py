"""`--launcher local --workers N`: the cells of one sweep on one node, on N long-lived worker processes, each owning
one device (GPU k through CUDA_VISIBLE_DEVICES=k; on CPU the run's threads divided among them). A worker is the worker
entry reading its cells from standard input (`python -m vistog_bench run <the run's arguments> --output RUN --cells
-`): it pays the imports and the task index once, then the coordinator hands it one cell at a time, the next as soon
as the last is recorded, so the cells go to whichever worker is free. A worker that dies costs only the cell it was
running: that cell is handed out again (to a fresh worker in its slot) up to `--retries` times, then its missing tasks
are recorded failed with the reason (exit code or signal) and the sweep goes on. The coordinator (this process,
holding the run's lock) keeps `<run>/launch.json` current and merges the cells' records into metrics.json when the last
one ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

from ..results import CellKey, CellResult, RunDir, failed_status
from .plan import (
    DONE_FD_ENV,
    FAILED,
    FROM_STDIN,
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
from .ranks import threads_each

POLL_S = 0.2  # how often the coordinator looks at its workers (a cell takes seconds at least)
WORKERS_DIR = "workers"  # <run>/workers/<slot>.log: each worker slot's output, every process started in it


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


@dataclass
class _Worker:
    """One worker process in its slot, the read end of the pipe it names its ended cells on, and the cell it runs
    (None: idle)."""

    proc: subprocess.Popen
    done: int  # file descriptor, non-blocking
    cell: tuple[PlannedCell, int] | None = None  # (cell, attempt)

    def ended(self) -> set[str]:
        """The ids the worker has said ended since the last look (whole lines; it writes one id per write)."""
        try:
            data = os.read(self.done, 4096)
        except BlockingIOError:
            return set()
        return set(data.decode().split())

    def send(self, line: str | None) -> None:
        """The next cell id to its standard input, or (None) the end of it; a worker already gone is left to the
        coordinator's next look at it (its exit code)."""
        try:
            if line is None:
                self.proc.stdin.close()
            else:
                self.proc.stdin.write(f"{line}\n")
                self.proc.stdin.flush()
        except BrokenPipeError:
            pass


def run_local(run: RunDir, config, planned: list[PlannedCell], launch) -> None:
    """Run the cells of `planned` not yet ok on `launch.workers` worker processes; returns when every cell has ended
    and every worker has exited."""
    gpu = config.device.startswith("cuda")
    threads = None if gpu else threads_each(config.threads or 1, launch.workers)
    done = {c.key: c for c in run.merged_cells()[0]}
    entries = {p.cell_id: {"state": OK} for p in planned if cell_state(p, done) == OK}
    queue = deque((p, 1) for p in planned if p.cell_id not in entries)
    workers: dict[int, _Worker] = {}

    def launch_record() -> None:
        write_launch(run, "local", launch.workers, planned, entries)

    launch_record()
    try:
        while queue or workers:
            for slot in range(launch.workers):  # hand the next cell to each idle worker, starting one where needed
                worker = workers.get(slot)
                if worker is None and queue:
                    worker = workers[slot] = _Worker(*_start(run, config, slot, gpu, threads))
                if worker is None or worker.cell is not None or worker.proc.stdin.closed:
                    continue
                if queue:
                    p, attempt = worker.cell = queue.popleft()
                    worker.send(p.cell_id)
                    entries[p.cell_id] = {
                        "state": RUNNING,
                        "worker": str(slot),
                        "pid": worker.proc.pid,
                        "attempts": attempt,
                        "log": str(_log_path(run, slot)),
                    }
                    launch_record()
                else:
                    worker.send(None)  # nothing left to hand out: it exits
            time.sleep(POLL_S)
            for slot, worker in list(workers.items()):
                if worker.cell is not None and worker.cell[0].cell_id in worker.ended():
                    p, _ = worker.cell  # every task recorded by the worker: it reads its next cell
                    entries[p.cell_id]["state"] = cell_state(p, {c.key: c for c in run.merged_cells()[0]}) or FAILED
                    worker.cell = None
                    launch_record()
                code = worker.proc.poll()
                if code is None:
                    continue
                del workers[slot]
                os.close(worker.done)
                if worker.cell is not None:  # it died with a cell unrecorded
                    _lost(run, worker.cell, code, slot, entries, queue, launch.retries)
                    launch_record()
    finally:
        for worker in workers.values():  # interrupted: no worker outlives its coordinator
            worker.proc.terminate()
            worker.proc.wait()
            os.close(worker.done)


def _lost(run: RunDir, running: tuple, code: int, slot: int, entries: dict, queue: deque, retries: int) -> None:
    """The cell a worker died in: handed out again while it has attempts left, else its missing tasks recorded
    failed."""
    p, attempt = running
    entry = entries[p.cell_id]
    entry.update(exit_code=code)
    if attempt <= retries:
        entry.update(state=QUEUED, reason=f"worker died ({_exit_reason(code)}), started again")
        queue.appendleft((p, attempt + 1))
    else:
        reason = f"worker died ({_exit_reason(code)}) on each of {attempt} attempt(s); log: {entry['log']}"
        _record_lost(run, p, reason, str(slot))
        entry.update(state=FAILED, reason=reason)


def _start(run: RunDir, config, slot: int, gpu: bool, threads: int | None) -> tuple[subprocess.Popen, int]:
    """A worker process for `slot` (reading cell ids on its standard input) and the read end of its pipe."""
    done_read, done_write = os.pipe()
    os.set_blocking(done_read, False)
    env = {**os.environ, LAUNCHER_ENV: "local", WORKER_ENV: str(slot), DONE_FD_ENV: str(done_write)}
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    else:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    args = worker_arguments(config, run, [FROM_STDIN], threads, "cuda" if gpu else config.device)
    log = _log_path(run, slot)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as handle:
            handle.write(f"== worker {slot} started\n".encode())
            handle.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "vistog_bench", *args],
                env=env,
                stdin=subprocess.PIPE,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                pass_fds=(done_write,),
            )
    finally:
        os.close(done_write)  # the worker holds its own copy
    return proc, done_read


def _log_path(run: RunDir, slot: int):
    return run.path / WORKERS_DIR / f"{slot}.log"


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
