"""`vistog-bench status RUN`: each cell of a run's plan, queued / running / ok / failed, with the worker, its pid or
job id and log where the launch record (launch.json) names them. A cell's state comes from its recorded tasks
(ok: every task ok; failed: one is not ok) and, while tasks are missing, from the launch record. A cell being run
again (a resumed run) is queued or running, its earlier failure in the reason, where the launch is live: SLURM's
queue says so, or the run's coordinator still holds its lock.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("run", help="a run folder")


def status_rows(run) -> list[list]:
    """[cell id, state, method@budget, worker, pid / job id, log, reason] per cell: the launch record's cells in plan
    order, or, without one, the cells recorded in the run's cell folders."""
    from ..results import CellKey
    from .plan import FAILED, OK, QUEUED, RUNNING, read_launch

    recorded = {c.key: c for c in run.merged_cells()[0]}
    launch = read_launch(run) or {"cells": []}
    live = launch.get("launcher") == "slurm" or run.in_use()  # its queued / running states are current
    if launch.get("launcher") == "slurm":  # cells still out: what SLURM says of their jobs now
        from .slurm import live_record

        launch = live_record(launch)
    entries = launch["cells"] or [
        {"cell_id": d["cell_id"], "method": r["method"], "budget": r["budget"], "tasks": [r["task"]]}
        for _, d in run.plan_cell_files()
        for r in d["records"][:1]
    ]
    rows = []
    for entry in entries:
        records = [recorded.get(CellKey(t, entry["method"], entry["budget"])) for t in entry.get("tasks", [])]
        failed = [r for r in records if r is not None and not r.ok]
        if live and entry.get("state") in (QUEUED, RUNNING):  # run again: its records may be an earlier attempt's
            state = entry["state"]
            reason = f"run again after: {failed[0].status}" if failed else entry.get("reason", "")
        elif failed:
            state, reason = FAILED, failed[0].status
        elif records and all(r is not None for r in records):
            state, reason = OK, ""
        else:
            state, reason = entry.get("state", QUEUED), entry.get("reason", "")
        where = entry.get("job_id") or entry.get("pid") or ""
        label = f"{entry['method']}@{entry['budget']}"
        rows.append([entry["cell_id"], state, label, entry.get("worker", ""), where, entry.get("log", ""), reason])
    return rows


def main(args) -> int:
    from tabulate import tabulate

    from ..results import load_run

    run = load_run(args.run)
    rows = status_rows(run)
    headers = ["cell", "state", "method", "worker", "pid / job", "log", "reason"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    counts = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no cells recorded")
    return 0
