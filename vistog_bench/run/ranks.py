"""Data parallel inside one cell: N processes started with torch's distributed environment (torchrun, the K tasks of
a SLURM cell with `--gpus-per-cell K`, `accelerate launch`) evaluate one cell together.

    torchrun --nproc_per_node 8 -m vistog_bench run --model ... --tasks gqa --device cuda

Every rank loads the cell's model on its own device (`adapter.process_device`: the GPU of its LOCAL_RANK; on CPU the
run's threads divided among the node's ranks) and runs the same plan in the same order. Each task is evaluated in two
passes (`evaluate_in_ranks`):

1. **generation, split by lmms-eval**: `simple_evaluate` in every rank with lmms-eval's own distributed path
   (`distributed_executor_backend="torchrun"`): it builds each rank's share of the requests
   (`build_all_requests(rank, world_size)`: documents rank, rank + N, ...) and the model answers them. Its padding
   requests (lmms-eval evens out the ranks' request counts for FSDP/DDP models) are answered empty by the adapter:
   our model holds no collective. What lmms-eval then scores on rank 0 is discarded: it concatenates the ranks'
   scores rank by rank, so its float sums and bootstrap resamples see another order than one process does.
2. **scoring, as one process**: every rank's answers (per request: task, document, index; what the model returned
   and its token counts) and sample log go to every rank (`share`), and each rank runs `simple_evaluate` once more as
   a single process (RANK 0 of WORLD_SIZE 1 in its environment), the adapter replaying the answers instead of
   running the model (`VisToGLMM.replaying`). Scores, their order, the bootstrap and the sample logs are then those
   of a one-process run, whatever N; every rank computes them (no rank waits on another inside lmms-eval), and only
   rank 0 writes (`Ranks.writes`).

Our own coordination (which tasks are left, whether a rank failed) goes over a separate gloo group, so it can never
be taken for one of lmms-eval's collectives. A task that fails in every rank (its data, its configuration) is recorded
failed as in one process, and the sweep goes on; a rank that fails alone inside lmms-eval's collectives (out of
memory on one GPU) leaves the others waiting there until the process group's timeout (30 minutes) ends the launch:
what was recorded before stays, `--resume` runs the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UsageError

TIMEOUT_MIN = 30  # the process group's collective timeout
_SINGLE_PROCESS = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}


@dataclass(frozen=True)
class Ranks:
    """This process's place in a multi-process launch (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes the run folder."""
        return self.rank == 0

    def threads_each(self, threads: int | None) -> int | None:
        """A CPU run's threads divided among the ranks of this node; None stays torch's own."""
        return None if threads is None else threads_each(threads, self.local_world_size)


def threads_each(threads: int, processes: int) -> int:
    """`threads` of a CPU run divided among `processes` sharing its node (ranks, local workers), at least one each."""
    return max(1, threads // processes)


def ranks_from_env(environ=os.environ) -> Ranks:
    """RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun, accelerate and submitit set them; a value that is
    not a count, or a rank outside its world, is refused in one line."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", None)):
        text = environ.get(name)
        if text is None or text == "":
            values[name] = default
            continue
        try:
            values[name] = int(text)
        except ValueError:
            raise UsageError(f"${name}={text!r} is not a number (set by the launcher: torchrun, SLURM)") from None
    world = values["WORLD_SIZE"]
    local_world = values["LOCAL_WORLD_SIZE"] if values["LOCAL_WORLD_SIZE"] is not None else world
    if world < 1 or not 0 <= values["RANK"] < world or not 0 <= values["LOCAL_RANK"] < max(local_world, 1):
        raise UsageError(
            f"inconsistent launch environment: RANK={values['RANK']}, LOCAL_RANK={values['LOCAL_RANK']}, "
            f"WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local_world}"
        )
    return Ranks(values["RANK"], world, values["LOCAL_RANK"], max(local_world, 1))


class _Group:
    """The launch's process group while a sweep runs (`process_group`), with our own gloo group beside it."""

    control = None  # torch.distributed group for `share`


@contextlib.contextmanager
def process_group(ranks: Ranks, device: str) -> Iterator[None]:
    """torch.distributed's default group for lmms-eval's collectives (NCCL on CUDA, gloo on CPU; MASTER_ADDR and
    MASTER_PORT from the launcher), made here unless the launcher made one, and a gloo group for ours; destroyed
    after when made here. Nothing for one process."""
    if not ranks.distributed:
        yield
        return
    import torch
    import torch.distributed as dist

    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UsageError(f"WORLD_SIZE={ranks.world_size} but ${name} is not set: start the ranks with torchrun")
    made = not dist.is_initialized()
    timeout = datetime.timedelta(minutes=TIMEOUT_MIN)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(ranks.local_rank)  # NCCL's device, and where unnamed allocations land: this rank's GPU
    if made:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    _Group.control = dist.new_group(backend="gloo", timeout=timeout)
    try:
        yield
    finally:
        _Group.control = None
        if made:
            dist.destroy_process_group()


def share(ranks: Ranks, value) -> list:
    """Every rank's `value`, in rank order, on every rank ([value] for one process)."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    values = [None] * ranks.world_size
    dist.all_gather_object(values, value, group=_Group.control)
    return values


def first(ranks: Ranks, value):
    """The first rank's non-None `value` (None when every rank has none): what ends a model load or a task (a failed
    record) is decided together, so every rank goes on to the same next step."""
    return next((found for found in share(ranks, value) if found is not None), None)


def from_writer(ranks: Ranks, make):
    """`make()`, called on rank 0 only (what only the writer may do: open the run folder, take its locks, read its
    records), with its result on every rank. Its error is every rank's: a UsageError as a UsageError (one line, exit
    2 everywhere), any other as rank 0's own and a RuntimeError elsewhere."""
    if not ranks.distributed:
        return make()
    value, error, raised = None, None, None
    if ranks.writes:
        try:
            value = make()
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks first, then raised here
            raised, error = exc, (isinstance(exc, UsageError), f"{type(exc).__name__}: {exc}", str(exc))
    shared_value, shared_error = share(ranks, (value, error))[0]
    if raised is not None:
        raise raised
    if shared_error is not None:
        usage, described, message = shared_error
        raise UsageError(message) if usage else RuntimeError(f"rank 0: {described}")
    return value if ranks.writes else shared_value


@contextlib.contextmanager
def held_by_writer(ranks: Ranks, lock) -> Iterator[None]:
    """`lock()` (a context manager: the run's lock, a cell's) held by rank 0 while every rank is inside; its refusal
    is every rank's."""
    with contextlib.ExitStack() as stack:
        from_writer(ranks, lambda: stack.enter_context(lock()) and None)
        yield


# -- one task in N ranks ---------------------------------------------------------------------------------------------
def recorded_answers(task_dict: dict) -> dict:
    """What the model answered in this rank: (task, doc_id, idx) -> (responses, token counts) of every request lmms-eval
    kept after generation (a failed sample's requests leave with the adapter's clean())."""
    answers = {}
    for task in task_dict.values():
        for instance in task.instances:
            answers[(instance.task_name, instance.doc_id, instance.idx)] = (
                list(instance.resps),
                list(instance.token_counts),
            )
    return answers


@contextlib.contextmanager
def single_process_environment() -> Iterator[None]:
    """RANK 0 of WORLD_SIZE 1 in the environment lmms-eval reads its ranks from, restored after."""
    saved = {name: os.environ.get(name) for name in _SINGLE_PROCESS}
    os.environ.update(_SINGLE_PROCESS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def evaluate_in_ranks(ranks: Ranks, lm, task_dict: dict, evaluate) -> dict | None:
    """One task's lmms-eval results, evaluated by every rank: `evaluate()` runs lmms-eval's simple_evaluate on
    `task_dict` with `lm` (the module docstring has the two passes). Returns the one-process results on every rank;
    `lm`'s sample log holds every rank's samples."""
    evaluate()
    answers, samples = {}, []
    for rank_answers, rank_samples in share(ranks, (recorded_answers(task_dict), lm.take_sample_log())):
        answers.update(rank_answers)
        samples += rank_samples
    with single_process_environment(), lm.replaying(answers, samples):
        return evaluate()


__all__ = [
    "Ranks",
    "evaluate_in_ranks",
    "first",
    "from_writer",
    "held_by_writer",
    "process_group",
    "ranks_from_env",
    "share",
    "single_process_environment",
    "threads_each",
]
