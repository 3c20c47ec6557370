"""`--launcher slurm`: a sweep's cells as one SLURM job array, submitted with submitit.

    vistog-bench run --model ... --tasks ... --launcher slurm --slurm-partition gpu --gpus-per-cell 1 \\
        --max-parallel 8 --slurm-time 4:00:00 --slurm-option account=proj --detach
    vistog-bench status RUN

One array task per cell not yet ok, at most `--max-parallel` running at once (the array's `%N` throttle). Each task
runs the worker entry for its cell (`vistog-bench run <the run's arguments> --output RUN --cells ID`) inside the job's
Python through `CellJob`, a submitit `Checkpointable`: when SLURM preempts the job, or its time is about to run out
(submitit asks for USR2 90 s before the limit), submitit requeues it and the requeued job runs the cell again; the
tasks it had recorded ok stay, the one cut off is measured again whole. A cell is `--gpus-per-cell` K tasks on one
node (K = 0: one CPU task with the run's threads); the device follows K (`cuda` for K >= 1, `cpu` for 0).

The coordinator (`run` without --detach) holds the run's lock and watches the array with `squeue` (no accounting
database needed), keeps `<run>/launch.json` current (state, job id, log of every cell), records a cell whose job ended
without recording it as failed with the job's last state and log, then merges the run and writes its report. With
--detach it returns once the array is submitted; a dependent job (`afterany` on the array) ends the run the same way
when the last array task has ended, and `vistog-bench status RUN` asks SLURM about the cells still queued or running.

Refused in one line (exit 2) before anything is submitted or loaded: SLURM unreachable (`sinfo` fails), an unknown
partition, `--gpus-per-cell` above the GPUs of every node of the partition, `--slurm-time` above the partition's
limit, a `--slurm-option` that is not KEY=VALUE (or a bare flag) or that sets what a flag of ours sets.

Logs: `<run>/slurm/<array id>_<index>_0_log.out` (the array task's stdout and stderr, submitit's naming); the cell's
library output goes to its own folder as for any worker.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import submitit
from submitit.helpers import Checkpointable, TorchDistributedEnvironment

from ..errors import UsageError

SLURM_DIR = "slurm"  # <run>/slurm/: submitit's pickles and the array tasks' logs
POLL_S = 2.0  # how often the coordinator asks squeue (a cell takes many seconds)
LOST_GRACE_S = 10.0  # a job gone from the queue with its cell unrecorded: files on a shared disk may lag this much
FINISH_TIME_MIN = 30  # the finishing job of a detached run: merge and report
DEFAULT_TIME_MIN = 24 * 60  # --slurm-time when the partition sets neither a default nor a finite limit
# flags of ours set these sbatch options; a --slurm-option may not set them behind the flag's back
OWNED_OPTIONS = {
    "partition": "--slurm-partition",
    "time": "--slurm-time",
    "array": "--max-parallel",
    "gres": "--gpus-per-cell",
    "gpus": "--gpus-per-cell",
    "gpus-per-node": "--gpus-per-cell",
    "gpus-per-task": "--gpus-per-cell",
    "ntasks": "--gpus-per-cell",
    "ntasks-per-node": "--gpus-per-cell",
    "nodes": "--gpus-per-cell (a cell runs on one node)",
    "output": "the run folder (logs go to <run>/slurm/)",
    "error": "the run folder (logs go to <run>/slurm/)",
    "signal": "submitit (USR2 before the time limit requeues the job)",
    "dependency": "the finishing job of --detach",
}
# squeue(1) JOB STATE CODES, as the cell's state while it has not recorded itself
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING_STATES = {"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}


# -- the request: flags, checked against the cluster -----------------------------------------------------------------
@dataclass(frozen=True)
class SlurmRequest:
    partition: str | None = None  # None: the cluster's default partition
    gpus_per_cell: int | None = None  # None: 1 with --device cuda or no --device, 0 with --device cpu
    max_parallel: int | None = None  # None: every cell at once
    time_min: int | None = None  # None: the partition's default time, else its limit, else DEFAULT_TIME_MIN
    options: tuple[tuple[str, str | bool], ...] = ()  # extra sbatch options (key with dashes, value or True)


def add_arguments(parser) -> None:
    group = parser.add_argument_group("--launcher slurm")
    group.add_argument("--slurm-partition", default=None, help="partition of the job array (default: the cluster's)")
    group.add_argument(
        "--gpus-per-cell",
        type=int,
        default=None,
        help="GPUs (tasks) per cell on one node; 0 runs CPU cells (default 1, or 0 with --device cpu)",
    )
    group.add_argument("--max-parallel", type=int, default=None, help="array tasks running at once (default: all)")
    group.add_argument(
        "--slurm-time",
        default=None,
        help="time limit per cell, SLURM's formats (minutes, H:MM:SS, D-HH:MM; default: the partition's)",
    )
    group.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra sbatch option for every cell (repeatable): account=proj, qos=high, mem=64G, or a bare flag",
    )


def request_from_args(args) -> SlurmRequest | None:
    """The SLURM request the flags make (None without --launcher slurm, where giving one of them is refused)."""
    given = [
        flag
        for flag, value in (
            ("--slurm-partition", args.slurm_partition),
            ("--gpus-per-cell", args.gpus_per_cell),
            ("--max-parallel", args.max_parallel),
            ("--slurm-time", args.slurm_time),
            ("--slurm-option", args.slurm_option or None),
        )
        if value is not None
    ]
    if args.launcher != "slurm":
        if given:
            raise UsageError(f"{given[0]} is an option of --launcher slurm")
        return None
    if args.gpus_per_cell is not None and args.gpus_per_cell < 0:
        raise UsageError(f"--gpus-per-cell must be 0 (CPU cells) or more, got {args.gpus_per_cell}")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    time_min = None
    if args.slurm_time is not None:
        time_min = slurm_minutes(args.slurm_time)
        if time_min is None or time_min < 1:
            raise UsageError(f"--slurm-time {args.slurm_time}: give a finite time of a minute or more")
    return SlurmRequest(
        partition=args.slurm_partition,
        gpus_per_cell=args.gpus_per_cell,
        max_parallel=args.max_parallel,
        time_min=time_min,
        options=tuple(_option(text) for text in args.slurm_option),
    )


def _option(text: str) -> tuple[str, str | bool]:
    """`KEY=VALUE` (or a bare flag `KEY`) of --slurm-option, its key spelt as sbatch's long option."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-").replace("_", "-")
    if not key or (sep and not value):
        raise UsageError(f"--slurm-option {text!r}: expected KEY=VALUE (an sbatch long option) or a bare flag KEY")
    if key in OWNED_OPTIONS:
        raise UsageError(f"--slurm-option {key}: set by {OWNED_OPTIONS[key]}")
    return key, value if sep else True


def slurm_minutes(text: str) -> int | None:
    """Minutes (rounded up) of a SLURM time: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`; None for `infinite` /
    `UNLIMITED`; UsageError for anything else (sbatch(1), --time)."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match is None:
        raise UsageError(f"--slurm-time {text!r}: not a SLURM time (minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is None:  # M, M:S, H:M:S
        hours, minutes, seconds = (first, second, third) if third is not None else (0, first, second or 0)
    else:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = first, second or 0, third or 0
    total_s = (((days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total_s // 60)


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_gpus: int  # the most GPUs one node of it has
    limit_min: int | None  # its time limit (None: infinite)
    default_min: int | None  # its default time (None: not set)


def _gpus(gres: str) -> int:
    """GPUs of a node's GRES (`gpu:8`, `gpu:a100:4(S:0-1)`, `gpu:2,mps:200`; `(null)`: none)."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def _partition_minutes(text: str) -> int | None:
    return None if text in ("n/a", "infinite", "UNLIMITED", "NONE", "") else slurm_minutes(text)


def partitions() -> dict[str, Partition]:
    """The cluster's partitions, from `sinfo` (one line per node and partition); UsageError when SLURM cannot be
    reached."""
    listed = _client("sinfo", "-h", "-N", "-o", "%P|%G|%l|%L")
    found: dict[str, Partition] = {}
    for line in listed.splitlines():
        name, gres, limit, default_time = line.strip().split("|")
        default, name = name.endswith("*"), name.rstrip("*")
        seen = found.get(name)
        gpus = max(_gpus(gres), seen.max_gpus if seen else 0)
        found[name] = Partition(name, default, gpus, _partition_minutes(limit), _partition_minutes(default_time))
    return found


def _client(*command: str) -> str:
    """stdout of a SLURM client command run to check the request; UsageError in one line when it fails."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UsageError(
            f"--launcher slurm: SLURM is not reachable from here ({command[0]} is not installed)"
        ) from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"--launcher slurm: SLURM is not reachable: {command[0]} did not answer in 120 s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise UsageError(
            f"--launcher slurm: SLURM is not reachable: {command[0]} failed: "
            + (lines[-1].strip() if lines else f"exit code {done.returncode}")
        )
    return done.stdout


def resolve(request: SlurmRequest, device: str | None) -> SlurmRequest:
    """`request` with its partition, GPUs per cell and time filled in and checked against the cluster (`sinfo`),
    one line and exit 2 for what cannot run. `device`: --device as given (None: follows --gpus-per-cell)."""
    kind = device.partition(":")[0] if device else None
    gpus = request.gpus_per_cell if request.gpus_per_cell is not None else (0 if kind == "cpu" else 1)
    if kind == "cpu" and gpus:
        raise UsageError(f"--device cpu with --gpus-per-cell {gpus}: CPU cells take --gpus-per-cell 0")
    if kind == "cuda" and not gpus:
        raise UsageError(f"--device {device} with --gpus-per-cell 0: CUDA cells need a GPU each")
    found = partitions()
    if not found:
        raise UsageError("--launcher slurm: sinfo lists no partition with a node")
    known = ", ".join(sorted(found))
    if request.partition is None:
        default = [p for p in found.values() if p.default]
        if not default:
            raise UsageError(f"--slurm-partition is needed: the cluster has no default partition (partitions: {known})")
        partition = default[0]
    elif request.partition in found:
        partition = found[request.partition]
    else:
        raise UsageError(f"--slurm-partition {request.partition}: no such partition (partitions: {known})")
    if gpus > partition.max_gpus:
        raise UsageError(
            f"--gpus-per-cell {gpus}: no node of partition {partition.name} has that many GPUs (the most on one node: "
            f"{partition.max_gpus}; CPU cells: --gpus-per-cell 0)"
        )
    time_min = request.time_min or partition.default_min or partition.limit_min or DEFAULT_TIME_MIN
    if partition.limit_min is not None and time_min > partition.limit_min:
        raise UsageError(
            f"--slurm-time: {time_min} min is above partition {partition.name}'s limit of {partition.limit_min} min"
        )
    return dataclasses.replace(request, partition=partition.name, gpus_per_cell=gpus, time_min=time_min)


def cell_device(request: SlurmRequest) -> str:
    """The device the cells run on: a GPU of their own, or the CPU."""
    return "cuda" if request.gpus_per_cell else "cpu"


# -- inside the job ----------------------------------------------------------------------------------------------------
class CellJob(Checkpointable):
    """One array task: the worker entry for one cell, run in the job's own Python (`arguments`: `vistog-bench run`
    arguments ending in `--cells ID`). Checkpointable: submitit requeues a preempted or timed-out job, which calls it
    again with the same arguments."""

    def __call__(self, arguments: list[str]) -> int:
        from ..cli import main
        from .plan import LAUNCHER_ENV, WORKER_ENV

        job = submitit.JobEnvironment()
        os.environ[LAUNCHER_ENV], os.environ[WORKER_ENV] = "slurm", job.job_id
        start = 1 + int(os.environ.get("SLURM_RESTART_COUNT", "0"))  # a requeued job's count of earlier starts
        line = f"vistog-bench: job {job.job_id} start {start} (pid {os.getpid()}): {' '.join(arguments)}"
        print(line, file=sys.stderr, flush=True)
        if job.num_tasks > 1:
            # the K tasks of --gpus-per-cell K evaluate the cell together (run/ranks.py), with torch's distributed
            # environment as torchrun would set it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); each takes the
            # GPU of its LOCAL_RANK, rank 0 records
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        code = main(arguments)
        if code not in (0, 1):  # 1: the cell ran and a task failed (recorded); 2 / 3: nothing could be recorded
            raise RuntimeError(f"vistog-bench {' '.join(arguments)} exited with code {code}")
        return code


# -- the coordinator -------------------------------------------------------------------------------------------------
def run_slurm(run, config, planned: list, launch) -> bool:
    """Submit the cells of `planned` not yet ok as one job array (`launch.slurm`: a resolved SlurmRequest). Without
    --detach, wait until every array task has ended, recording the cells their jobs left unrecorded, and return True;
    with it, submit the job that ends the run after the array and return False."""
    from ..results import RunDir
    from .local import worker_arguments
    from .plan import OK, QUEUED, cell_state, write_launch

    request = launch.slurm
    run = RunDir(run.path.resolve())  # the jobs name the run by its absolute path: they may start elsewhere
    done = {c.key: c for c in run.merged_cells()[0]}
    entries = {p.cell_id: {"state": OK} for p in planned if cell_state(p, done) == OK}
    todo = [p for p in planned if p.cell_id not in entries]
    parallel = min(request.max_parallel or len(todo), len(todo)) or 1
    array = None
    if todo:
        device = cell_device(request)
        threads = config.threads if device == "cpu" else None
        arguments = [worker_arguments(config, run, [p.cell_id], threads, device) for p in todo]
        # a CPU cell takes the run's threads; a GPU cell the partition's CPUs (or --slurm-option cpus-per-task=N)
        cells = {"gpus_per_node": request.gpus_per_cell} if request.gpus_per_cell else {"cpus_per_task": threads or 1}
        executor = _executor(
            run, request, ntasks_per_node=max(1, request.gpus_per_cell), array_parallelism=parallel, **cells
        )
        jobs = _submitted(lambda: executor.map_array(CellJob(), arguments))
        array = _array_id(jobs[0].job_id)
        for p, job in zip(todo, jobs, strict=True):
            entries[p.cell_id] = {
                "state": QUEUED,
                "worker": job.job_id,
                "job_id": job.job_id,
                "log": str(job.paths.stdout),
            }
        print(f"vistog-bench run: {len(todo)} cell(s) submitted as SLURM job array {array}", file=sys.stderr)
    write_launch(run, "slurm", parallel, planned, entries)
    if launch.detach:
        if array is not None:
            executor = _executor(
                run,
                request,
                cpus_per_task=1,
                dependency=f"afterany:{array}",
                time=min(FINISH_TIME_MIN, request.time_min),
            )
            finisher = _submitted(lambda: executor.submit(finish_detached, str(run.path)))
            print(
                f"vistog-bench run: detached; SLURM job {finisher.job_id} merges the run and writes its report once "
                f"the array has ended (meanwhile: vistog-bench status {run.path})",
                file=sys.stderr,
            )
        return False
    try:
        watch(run, planned, entries, parallel)
    except KeyboardInterrupt:  # no job outlives its coordinator (--detach leaves them on purpose)
        if array is not None:
            subprocess.run(["scancel", array], capture_output=True, timeout=60)
        raise
    return True


def _executor(run, request: SlurmRequest, **parameters) -> submitit.SlurmExecutor:
    """A submitit executor writing into `<run>/slurm/`: the request's partition and time, requeue on (a preempted
    job comes back), stdout and stderr in one log, then `parameters` (submitit's names); an sbatch option the request's
    --slurm-option sets replaces ours of the same name (`cpus-per-task`, `job-name`)."""
    ours = {
        "job_name": f"vistog-{run.path.name}",
        "partition": request.partition,
        "time": request.time_min,
        **parameters,
    }
    options = dict(request.options)
    executor = submitit.SlurmExecutor(folder=run.path / SLURM_DIR)
    executor.update_parameters(
        stderr_to_stdout=True,
        additional_parameters={"requeue": True, **options},
        **{name: value for name, value in ours.items() if name.replace("_", "-") not in options},
    )
    return executor


def _submitted(submit):
    """What `submit()` returns; sbatch refusing it (an account, a QOS, a memory request) is one line, exit 2."""
    try:
        return submit()
    except submitit.core.utils.FailedJobError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()]
        raise UsageError(f"--launcher slurm: sbatch refused the job: {lines[-1] if lines else exc}") from None


def _array_id(job_id: str) -> str:
    return job_id.split("_")[0]


def watch(run, planned: list, entries: dict, parallel: int) -> None:
    """Follow the cells of `entries` (cell id -> launch entry) until each is recorded or its job has ended; a job gone
    for LOST_GRACE_S with its cell's tasks unrecorded has them recorded failed (its last state and log named).
    `<run>/launch.json` follows every change; one console line per cell state."""
    from .local import _record_lost
    from .plan import FAILED, OK, cell_state, write_launch

    gone_since: dict[str, float] = {}
    while True:
        queue = queue_states({e["job_id"] for e in entries.values() if e["state"] not in (OK, FAILED)})
        recorded = run.merged_cells()[0]
        changed, active = False, False
        for p in planned:
            entry = entries[p.cell_id]
            if entry["state"] in (OK, FAILED):
                continue
            # what this job recorded (a resumed cell's earlier failure is not its state)
            mine = {c.key: c for c in recorded if c.worker == entry["job_id"]}
            state, reason = live_state(entry, cell_state(p, mine), queue)
            if state == FAILED and reason:  # the job ended and the cell is not recorded
                first = gone_since.setdefault(p.cell_id, time.monotonic())
                if time.monotonic() - first < LOST_GRACE_S:
                    active = True
                    continue
                _record_lost(run, p, reason, entry["job_id"], launcher="slurm")
            if state != entry["state"]:
                entry.update(state=state, **({"reason": reason} if reason else {}))
                print(f"  {p.label} [{p.cell_id}]: {state} (job {entry['job_id']})", file=sys.stderr)
                changed = True
            active = active or state not in (OK, FAILED)
        if changed:
            write_launch(run, "slurm", parallel, planned, entries)
        if not active:
            return
        time.sleep(POLL_S)


def live_state(entry: dict, recorded: str | None, queue: dict | None) -> tuple[str, str]:
    """(state, reason) of a launched cell: its recorded state when its tasks are all recorded (or one failed), else
    what SLURM says of its job (`queue`: job id -> (state, reason), None when squeue failed: the entry's own state).
    A job SLURM no longer runs or queues, with the cell unrecorded, is failed with a reason."""
    from .plan import FAILED, QUEUED, RUNNING

    if recorded is not None:
        return recorded, ""
    if queue is None:
        return entry["state"], entry.get("reason", "")
    state, _ = queue.get(entry["job_id"], ("", ""))
    if state in QUEUED_STATES:
        return QUEUED, ""
    if state in RUNNING_STATES:
        return RUNNING, ""
    ended = f"ended {state}" if state else "left the queue"
    return FAILED, f"job {entry['job_id']} {ended} without recording the cell; log: {entry.get('log', '?')}"


def queue_states(job_ids: set[str]) -> dict[str, tuple[str, str]] | None:
    """job id -> (SLURM state, reason) of the jobs SLURM still knows among `job_ids` (array tasks as `A_i`, finished
    ones too while the controller keeps them: `squeue --states all`); None when squeue fails."""
    if not job_ids:
        return {}
    arrays = sorted({_array_id(j) for j in job_ids})
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # every job named has left the controller's memory (MinJobAge after it ended)
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, state, reason = line.strip().split("|", 2)
        for one in _expand_array(job_id):
            states[one] = (state, reason)
    return states


def _expand_array(job_id: str) -> list[str]:
    """`12_[3-5,7%2]` (array tasks not yet split off) -> 12_3, 12_4, 12_5, 12_7; any other id as it is."""
    match = re.fullmatch(r"(\d+)_\[([\d,-]+)(?:%\d+)?\]", job_id)
    if match is None:
        return [job_id]
    ids = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        ids += [f"{match.group(1)}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def refuse_live_cells(run) -> None:
    """A run whose SLURM jobs are still queued or running is not resumed, by any launcher (two processes would run
    one cell): one line naming the jobs."""
    from .plan import FAILED, OK, QUEUED, RUNNING, read_launch

    record = read_launch(run)
    if not record or record.get("launcher") != "slurm":
        return

    launched = [c for c in record["cells"] if c.get("job_id") and c.get("state") not in (OK, FAILED)]
    queue = queue_states({c["job_id"] for c in launched}) or {}
    live = [c["job_id"] for c in launched if live_state(c, None, queue)[0] in (QUEUED, RUNNING)]
    if live:
        raise UsageError(
            f"--resume {run.path}: SLURM still runs or queues its job(s) {', '.join(live)}; wait for them "
            f"(vistog-bench status {run.path}) or scancel them first"
        )


# -- after a detached array, and for `status` ------------------------------------------------------------------------
def launched_cells(record: dict) -> list:
    """The plan cells of a launch record, rebuilt from it (no checkpoint is read): index, method, budget, checkpoint,
    tasks and id as the coordinator wrote them."""
    from .plan import PlannedCell
    from .sweep import Cell

    return [
        PlannedCell(i, Cell(c["method"], c["budget"], c["checkpoint"]), tuple(c["tasks"]), c["cell_id"])
        for i, c in enumerate(record["cells"])
    ]


def finish_detached(run_path: str) -> None:
    """The job after a detached array (`afterany`): record what its jobs left unrecorded, merge the run and write its
    report, as the coordinator would have."""
    from ..results import load_run
    from .plan import read_launch
    from .sweep import REPORT_DIR, finish_run

    run = load_run(run_path)
    with run.lock():
        record = read_launch(run)
        entries = {c["cell_id"]: {k: v for k, v in c.items() if k in ENTRY_KEYS} for c in record["cells"]}
        watch(run, launched_cells(record), entries, record["workers"])
        finish_run(run)
        if run.manifest().config.get("report", True):
            from ..report import build_report, write_report

            write_report(build_report([run.path]), run.path / REPORT_DIR)


ENTRY_KEYS = ("state", "worker", "job_id", "log", "reason")  # what run_slurm puts in a launch entry


def live_record(record: dict) -> dict:
    """A SLURM launch record with each cell not yet ended in it given SLURM's view now (queued, running, or failed
    with the reason its job ended), for `vistog-bench status`; the record on disk is left as it is."""
    from .plan import FAILED, OK

    queue = queue_states({c["job_id"] for c in record["cells"] if c.get("job_id")})
    cells = []
    for cell in record["cells"]:
        if cell.get("job_id") and cell.get("state") not in (OK, FAILED):
            state, reason = live_state(cell, None, queue)
            cell = {**cell, "state": state, **({"reason": reason} if reason else {})}
        cells.append(cell)
    return {**record, "cells": cells}
