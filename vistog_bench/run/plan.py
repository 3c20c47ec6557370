"""A sweep's plan as units of work: every cell (a checkpoint, a method label and a budget, with the run's tasks) gets a
stable id, its own folder in the run (`<run>/cells/<method>__<budget>__<cell_id>/`) and one writer at a time.

    vistog-bench run --tasks shapes_vqa --dry-run                  # the plan: id, state, method, budget, tasks
    vistog-bench run --tasks shapes_vqa --output RUN --cells ID1   # the worker entry: run those cells into RUN
    vistog-bench status RUN                                        # each cell: queued / running / ok / failed

The id is a hash of what defines the cell's answers (`cell_definition`): the same arguments give the same ids on any
machine, so a worker started by another launcher (run/local.py, SLURM) names its cell by id. Threads, the output
folder, the data folder and the launcher are not part of it. `<run>/launch.json` is the launch record a coordinator
keeps: for each cell its launcher, worker, pid or job id, log and state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..results import LAUNCH_FILE, CellResult, RunDir, read_json, safe_file_stem, write_json

LAUNCHERS = ("local", "slurm")  # `--launcher` choices the run command takes (in-process: --workers 1)
# What a worker records as its launcher and name: set by the process that starts it (run/local.py; SLURM jobs).
LAUNCHER_ENV, WORKER_ENV = "VISTOG_BENCH_LAUNCHER", "VISTOG_BENCH_WORKER"
INPROCESS = "inprocess"  # the launcher of a sweep run in the `run` process itself
QUEUED, RUNNING, OK, FAILED = "queued", "running", "ok", "failed"
FROM_STDIN = "-"  # `--cells -`: the worker reads its cell ids from standard input, one per line, as they come
CELL_START = "vistog-bench worker: cell"  # the line a worker prints as it starts a cell (`CELL_START <id>`)
DONE_FD_ENV = "VISTOG_BENCH_DONE_FD"  # a pipe the local launcher gives its worker: each cell's id once it has ended
ID_LENGTH = 12  # hex digits of the definition's SHA-256 kept in the id


@dataclass(frozen=True)
class PlannedCell:
    index: int  # position in the plan: the order metrics.json lists cells in
    cell: object  # run.sweep.Cell
    tasks: tuple[str, ...]  # the run's tasks, groups expanded
    cell_id: str

    @property
    def stem(self) -> str:
        return safe_file_stem(f"{self.cell.method}__{self.cell.budget}__{self.cell_id}")

    @property
    def label(self) -> str:
        return f"{self.cell.method}@{self.cell.budget}"


def cell_definition(config, cell, tasks: tuple[str, ...]) -> dict:
    """What makes one cell's answers what they are (RunConfig `config`, sweep.Cell `cell`)."""
    return {
        "checkpoint": cell.checkpoint,
        "method": cell.method,
        "budget": cell.budget,
        "budget_rule": cell.budget_rule,
        "serve_all": cell.serve_all,
        "tasks": list(tasks),
        "limit": config.limit,
        "seed": config.seed,
        "dtype": config.dtype,
        "device": config.device.partition(":")[0],
        "batch_size": config.batch_size,
        "max_frames": config.max_frames,
        "chat_template": config.chat_template,
        "bootstrap_iters": config.bootstrap_iters,
        "profile": config.profile,
    }


def cell_id(definition: dict) -> str:
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:ID_LENGTH]


def plan(config, cells: list, tasks: list[str]) -> list[PlannedCell]:
    tasks = tuple(tasks)
    return [PlannedCell(i, c, tasks, cell_id(cell_definition(config, c, tasks))) for i, c in enumerate(cells)]


def cells_from(lines, planned: list[PlannedCell]):
    """The cells named by `lines` (`--cells -`: one id per line of standard input), each as its line arrives; the
    worker's output says which it starts."""
    import sys

    for line in lines:
        if line.strip():
            (p,) = select(planned, (line.strip(),))
            print(f"{CELL_START} {p.cell_id}", file=sys.stderr, flush=True)
            yield p


def announce_done(p: PlannedCell) -> None:
    """Tell the launcher that started this worker (through its pipe, DONE_FD_ENV) that cell `p` has ended, every
    task recorded: it hands out the next one."""
    fd = os.environ.get(DONE_FD_ENV)
    if fd:
        os.write(int(fd), f"{p.cell_id}\n".encode())


def select(planned: list[PlannedCell], ids: tuple[str, ...]) -> list[PlannedCell]:
    """The cells `ids` name (`--cells`), in plan order; an id not in the plan is refused in one line."""
    known = {p.cell_id: p for p in planned}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UsageError(
            f"--cells {','.join(unknown)}: not a cell of this plan (the arguments must be the run's own; "
            "`vistog-bench run ... --dry-run` lists the ids)"
        )
    return [p for p in planned if p.cell_id in ids]


def cell_state(planned: PlannedCell, cells: dict) -> str | None:
    """ok when every task of the cell is recorded ok, failed when one is recorded not ok, None while some are
    missing (`cells`: CellKey -> CellResult of the run)."""
    from ..results import CellKey

    records = [cells.get(CellKey(t, planned.cell.method, planned.cell.budget)) for t in planned.tasks]
    if any(r is not None and not r.ok for r in records):
        return FAILED
    return OK if all(r is not None for r in records) else None


# -- who runs a cell, on what ------------------------------------------------------------------------------------------
def hardware_record(device: str) -> dict:
    """The machine a cell's timings come from: device kind, GPU model and driver (None on CPU), CPU model, torch
    threads. Timings compare only between cells whose records are equal (analysis.hardware_groups)."""
    import torch

    from ..profiling import device_facts

    facts = device_facts(device)
    gpu = torch.device(device).type == "cuda"
    return {
        "device": torch.device(device).type,
        "gpu": (facts.get("name") or facts.get("torch_device_name")) if gpu else None,
        "driver": facts.get("driver_version") if gpu else None,
        "cpu": facts.get("host_cpu"),
        "threads": torch.get_num_threads(),
    }


class CellSink:
    """Where one process records the plan cell it runs: the cell's own result.json and profile.jsonl; an in-process
    sweep (`shared`) also keeps the run's metrics.json (merged) and profile.jsonl current, as before workers existed.
    Every record is stamped with the cell id, hardware, launcher and worker. In a data-parallel launch only rank 0's
    sink writes records; another rank's keeps only its library output (`run.rank<k>.log`)."""

    def __init__(self, run: RunDir, planned: PlannedCell, stamp: dict, shared: bool, rank: int = 0):
        self.run, self.planned, self.stamp, self.shared, self.rank = run, planned, stamp, shared, rank

    @property
    def writes(self) -> bool:
        return self.rank == 0

    @property
    def log_path(self) -> Path:
        from .sweep import LOG_FILE

        folder = self.run.path if self.shared else self.run.cell_dir(self.planned.stem)
        name = LOG_FILE if self.writes else f"{Path(LOG_FILE).stem}.rank{self.rank}{Path(LOG_FILE).suffix}"
        return folder / name

    def record(self, result: CellResult) -> CellResult:
        result = dataclasses.replace(result, cell_id=self.planned.cell_id, **self.stamp)
        if not self.writes:
            return result
        self.run.record_plan_cell(self.planned.stem, self.planned.index, self.planned.cell_id, result)
        if self.shared:
            self.run.merge()
        return result

    def profile(self, records: list) -> None:
        if not self.writes:
            return
        self.run.append_cell_profile(self.planned.stem, records)
        if self.shared:
            self.run.append_profile(records)

    def note_template(self, checkpoint: str, entry: dict) -> None:
        if not self.writes:
            return
        p = self.planned
        self.run.record_plan_cell(p.stem, p.index, p.cell_id, templates={checkpoint: entry})
        if self.shared:
            self.run.merge()

    def cells(self) -> list[CellResult]:
        return self.run.merged_cells()[0]


def process_stamp(device: str, launcher: str | None = None, ranks: int = 1) -> dict:
    """launcher, worker and hardware of this process (a worker's launcher and name come from its environment); a cell
    evaluated by `ranks` > 1 processes together (run/ranks.py) has them in its hardware record, so its timings are
    compared only with cells run the same way."""
    hardware = hardware_record(device)
    if ranks > 1:
        hardware["ranks"] = ranks
    return {
        "launcher": launcher or os.environ.get(LAUNCHER_ENV) or "worker",
        "worker": os.environ.get(WORKER_ENV) or f"pid{os.getpid()}",
        "hardware": hardware,
    }


# -- the launch record and the plan's printout -----------------------------------------------------------------------
def write_launch(run: RunDir, launcher: str, workers: int, planned: list[PlannedCell], entries: dict) -> None:
    """`<run>/launch.json`, written by the coordinator only: every cell with its launch `entries[cell_id]` (state,
    worker, pid, job_id, log, attempts, reason)."""
    write_json(
        run.path / LAUNCH_FILE,
        {
            "launcher": launcher,
            "workers": workers,
            "cells": [
                {
                    "cell_id": p.cell_id,
                    "stem": p.stem,
                    "method": p.cell.method,
                    "budget": p.cell.budget,
                    "checkpoint": p.cell.checkpoint,
                    "tasks": list(p.tasks),
                    **entries.get(p.cell_id, {"state": QUEUED}),
                }
                for p in planned
            ],
        },
    )


def read_launch(run: RunDir) -> dict | None:
    path = run.path / LAUNCH_FILE
    return read_json(path, "launch record") if path.is_file() else None


def print_plan(planned: list[PlannedCell], problems: dict, done: dict) -> None:
    """The plan for --dry-run on stdout: one line per cell (id, state, method@budget, checkpoint, tasks), refusals
    named."""
    from tabulate import tabulate

    rows = []
    for p in planned:
        state = problems.get(p.cell) and "refused" or cell_state(p, done) or "to run"
        rows.append([p.cell_id, state, p.cell.method, p.cell.budget, p.cell.checkpoint, ",".join(p.tasks)])
    print(
        tabulate(rows, headers=["cell", "state", "method", "budget", "checkpoint", "tasks"], tablefmt="github"),
    )
    for problem in problems.values():
        print(f"refused: {problem}")
    todo = sum(1 for p in planned if not problems.get(p.cell) and cell_state(p, done) != OK)
    print(f"{len(planned)} cell(s), {todo} to run, {len(problems)} refused")
