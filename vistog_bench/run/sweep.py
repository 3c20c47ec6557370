"""The sweep behind `vistog-bench run` (the command's behaviour: `run/cli.py`): plan the cells of methods x budgets x
tasks, refuse what cannot run before anything loads, evaluate each cell through lmms-eval, record it in the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..results import (
    DISK_FULL_ERRNOS,
    MANIFEST_FILE,
    STATUS_OOM,
    CellKey,
    CellResult,
    RunDir,
    RunManifest,
    check_writable_dir,
    failed_status,
    load_run,
    new_run_id,
    write_json,
    write_jsonl,
)
from ..results.provenance import git_sha, now, package_versions
from .config import RunConfig, check_run_config, comparable, config_differences, config_from_manifest
from .console import third_party_output_to
from .lmms_results import cell_from_lmms_results, sample_lines, token_means
from .plan import (
    FROM_STDIN,
    INPROCESS,
    CellSink,
    PlannedCell,
    announce_done,
    cells_from,
    plan,
    print_plan,
    process_stamp,
    select,
)
from .ranks import Ranks, evaluate_in_ranks, first, from_writer, held_by_writer, process_group, ranks_from_env, share
from .tasks import TaskGroup, expand_tasks, group_cell, task_limits

LOG_FILE = "run.log"
REPORT_DIR = "report"  # <run>/report/


@dataclass(frozen=True)
class Cell:
    method: str
    budget: int
    checkpoint: str
    budget_rule: str | None = None  # a family's (CellResult.budget_rule); None for LLaVA-1.5
    serve_all: bool = False  # a family's `none` on per-image totals: set up with no budget (every token stays)

    @property
    def served_budget(self) -> int | None:
        """The budget the model is set up with (None: every visual token, the recorded budget being the most one
        image can give)."""
        return None if self.serve_all else self.budget


@dataclass(frozen=True)
class CheckpointFacts:
    """What planning reads from a checkpoint's config (nothing is loaded)."""

    family: object  # model.families.ModelFamily, chosen from the config's model_type
    semantic: int | None  # N of a VisToG checkpoint (per view where the family says so); None for a stock one
    full: int  # the full budget (ModelFamily.full_budget): the patch count, 100 %, the most tokens one image gives
    serve_all: bool  # `none` is set up with no budget: every visual token stays (ModelFamily.none_budget)

    @property
    def lineage(self) -> str:
        """The family a sweep may not mix: LLaVA-1.5 (stock and VisToG) or the family's stock model_type."""
        return self.family.model_type


PER_VIEW = "per_view"  # VisToG on NeXT / OneVision: N tokens per view (CellResult.budget_rule)


# -- planning --------------------------------------------------------------------------------------------------------
def _checkpoint_facts(path: str) -> CheckpointFacts:
    """A checkpoint's facts from its config.json, validated, as its family reads them (`model.families`)."""
    from ..model.families import family_for
    from ..model.loading import checkpoint_model_type, load_config

    checkpoint_model_type(path)  # a loadable checkpoint folder that asks for no code of its own
    config = load_config(path)
    family = family_for(config)
    family.check_checkpoint(path)
    full = family.full_budget(config)
    return CheckpointFacts(family, family.num_semantic_tokens(config), full, family.none_budget(config) is None)


def checkpoint_budgets(models) -> tuple[int, ...]:
    """Each checkpoint's own budget, largest first: N for a LLaVA-1.5 VisToG checkpoint, the full budget for a stock
    one and for a family's (a family's VisToG cells take their N per view whatever the budgets)."""
    facts = [_checkpoint_facts(str(m)) for m in models]
    own = {f.semantic if f.semantic and not f.family.vistog_per_view else f.full for f in facts}
    return tuple(sorted(own, reverse=True))


def default_methods(models) -> tuple[str, ...]:
    """Without --method: `vistog` when a VisToG checkpoint is among `models` (the `none` reference comes with any stock
    one), else `none` (stock checkpoints only: the reference is what they can run without a reducer named)."""
    return ("vistog",) if any(_checkpoint_facts(str(m)).semantic for m in models) else ("none",)


def plan_cells(config: RunConfig) -> list[Cell]:
    """The sweep: `none` at the full budget first, then every other method at every budget below it (VisToG on a
    family: one cell per VisToG checkpoint, at its N per view)."""
    from ..reducers import parse_method

    facts = {path: _checkpoint_facts(path) for path in config.models}
    lineages = sorted({f.lineage for f in facts.values()})
    if len(lineages) > 1:
        raise UsageError(
            f"the checkpoints are of different model families ({', '.join(lineages)}); sweep one family at a time"
        )
    family = next(iter(facts.values())).family
    stock, vistog, fulls = None, {}, set()
    for path, fact in facts.items():
        fulls.add(fact.full)
        if fact.semantic is None:
            stock = stock or path
        else:
            vistog.setdefault(fact.semantic, path)
    if len(fulls) != 1:
        raise UsageError(
            f"the checkpoints disagree on the {family.full_budget_name} ({sorted(fulls)}); sweep one model family"
        )
    full = fulls.pop()
    rule = family.budget_rule
    methods = [parse_method(m).label for m in config.methods]  # checked again: a resumed run's config is a file
    for budget in config.budgets:
        family.check_budget(budget, full)
    cells = []
    if stock is not None:
        cells.append(Cell("none", full, stock, rule, serve_all=facts[stock].serve_all))
    elif any(m != "vistog" for m in methods):
        raise UsageError(
            f"methods other than vistog, and the full-budget reference, need a stock {family.label} checkpoint "
            "among --model"
        )
    for method in methods:
        if method == "none":
            continue
        if method == "vistog" and family.vistog_per_view:
            if not vistog:
                raise UsageError(
                    f"no VisToG checkpoint of {family.model_type} among --model (one saved by "
                    "`vistog-bench train --stage vistog-stage1`)"
                )
            cells += [Cell(method, n, path, PER_VIEW) for n, path in sorted(vistog.items(), reverse=True)]
            continue
        for budget in sorted(set(config.budgets), reverse=True):
            if budget == full:
                continue
            if method == "vistog":
                if budget not in vistog:
                    have = ", ".join(str(n) for n in sorted(vistog)) or "none"
                    raise UsageError(f"no VisToG checkpoint for budget {budget} among --model (VisToG budgets: {have})")
                cells.append(Cell(method, budget, vistog[budget]))
            else:
                cells.append(Cell(method, budget, stock, rule))
    _check_every_request_planned(config, cells, full, family, vistog)
    return cells


def _check_every_request_planned(config: RunConfig, cells: list[Cell], full: int, family, vistog: dict) -> None:
    """Every method and every budget asked for has a cell (the full budget: the `none` reference); what has none is
    refused, one line each, instead of being left out of the sweep without a word."""
    problems = []
    planned_methods = {cell.method for cell in cells}
    below = sorted({b for b in config.budgets if b != full}, reverse=True)
    for method in dict.fromkeys(config.methods):
        if method in planned_methods:
            continue
        if method == "vistog" and not vistog:
            problems.append(
                f"--method vistog: no VisToG checkpoint among --model (every one given is a stock {family.label} "
                "checkpoint, "
                "or a VisToG one saved with num_semantic_tokens null); nothing would run it"
            )
        else:
            problems.append(
                f"--method {method}: nothing to run: every budget given ({', '.join(map(str, config.budgets))}) is "
                f"the full budget {full}, which only the `none` reference measures; give --budgets below {full}"
            )
    for budget in below:
        if not any(cell.budget == budget for cell in cells):
            planned = ", ".join(sorted(planned_methods))
            problems.append(
                f"--budgets {budget}: no requested method runs at it (methods planned: {planned}; `none` runs only "
                f"at the full budget {full}, VisToG at its checkpoints' own N); add a reducer with --method or drop it"
            )
    if problems:
        raise UsageError("\n".join(problems))


def check_combinations(cells: list[Cell]) -> None:
    """Refuse, before anything is loaded, every cell whose checkpoint config rules its method out (one line each)."""
    problems = combination_problems(cells)
    if problems:
        raise UsageError("\n".join(problems.values()))


def combination_problems(cells: list[Cell]) -> dict[Cell, str]:
    """Each cell whose checkpoint config rules its method out, with the line that refuses it."""
    from ..model.loading import load_config
    from ..reducers.methods import config_problem

    configs, problems = {}, {}
    for cell in cells:
        if cell.budget_rule == PER_VIEW:  # a per-view VisToG checkpoint serves vistog only
            continue
        if cell.checkpoint not in configs:
            try:
                configs[cell.checkpoint] = load_config(cell.checkpoint)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - an unreadable config is bad input, named with its checkpoint
                raise UsageError(f"{cell.checkpoint}: cannot read its config: {type(exc).__name__}: {exc}") from None
        problem = config_problem(configs[cell.checkpoint], cell.method, budget=cell.budget)
        if problem:
            problems[cell] = f"cannot run {cell.method} at budget {cell.budget} on {cell.checkpoint}: {problem}"
    return problems


# -- the manifest ----------------------------------------------------------------------------------------------------


def _note_prompt_template(sink: CellSink, served) -> None:
    """Record which chat template this checkpoint's prompts were rendered with, and its origin (the merge folds it
    into the manifest)."""
    entry = {"source": str(served.prompt_template.source), "style": str(served.prompt_template.style)}
    sink.note_template(served.pretrained, entry)


# -- running ---------------------------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _task_adapter(served, profiler, task: str, config: RunConfig, manager):
    """A fresh adapter over the loaded model for one task, and lmms-eval's task dict for it. Failed samples' requests
    leave the task before scoring (the adapter's clean())."""
    from lmms_eval.tasks import get_task_dict

    from ..adapter import VisToGLMM

    task_dict = get_task_dict([task], manager, "simple" if VisToGLMM.is_simple else "chat")
    lm = VisToGLMM(
        served=served,
        batch_size=config.batch_size,
        max_frames=config.max_frames,
        profiler=profiler,
        unscored_failures_in=tuple(task_dict.values()),
    )
    return lm, task_dict


def _evaluate_task(
    lm, task_dict: dict, limit: int | None, config: RunConfig, manager, cell_path: Path, ranks: Ranks
) -> dict | None:
    """lmms-eval's results of one task (in every rank of a data-parallel cell: run/ranks.py)."""
    import argparse
    import tempfile

    from lmms_eval.evaluator import simple_evaluate

    # Post-processing reads documents without their media (lmms-eval's eval_docs_no_media): decoding every row there
    # would run outside the adapter's per-sample guard, and one corrupt image would fail the whole task.
    # Tasks that write submission files (TextVQA, MMBench, captions) put them under the cell's folder of the run, not
    # the cwd: their names are fixed per task (mmbench_en_dev_results.json), so cells sharing a folder would overwrite.
    # The other ranks of a data-parallel cell score too: theirs go to a folder of their own, removed after.
    with contextlib.ExitStack() as stack:
        output = cell_path if ranks.writes else stack.enter_context(tempfile.TemporaryDirectory(prefix="vistog-rank"))
        lmms_args = argparse.Namespace(output_path=str(output), process_with_media=False)
        # lmms-eval's torchrun backend: it brings no Accelerator of its own into the launch's process group
        backend = {"distributed_executor_backend": "torchrun"} if ranks.distributed else {}

        def evaluate() -> dict | None:
            return simple_evaluate(
                cli_args=lmms_args,
                model=lm,
                tasks=list(task_dict.values()),
                limit=limit,
                log_samples=True,
                task_manager=manager,
                bootstrap_iters=config.bootstrap_iters,
                random_seed=config.seed,
                numpy_random_seed=config.seed,
                torch_random_seed=config.seed,
                verbosity="WARNING",
                **backend,
            )

        return evaluate_in_ranks(ranks, lm, task_dict, evaluate) if ranks.distributed else evaluate()


@dataclass(frozen=True)
class Launch:
    """How the sweep's cells are run (not part of RunConfig: it changes where cells run, never what they answer)."""

    launcher: str | None = None  # None: in this process (--workers 1); "local": worker subprocesses
    workers: int = 1
    retries: int = 1
    cells: tuple[str, ...] = ()  # the worker entry: only these cell ids, into the run folder --output names
    dry_run: bool = False
    slurm: object = None  # run.slurm.SlurmRequest of "slurm", resolved against the cluster
    detach: bool = False  # "slurm": return once the job array is submitted


def run_sweep(
    config: RunConfig, command: list[str] | None = None, launch: Launch = Launch()
) -> tuple[RunDir, list[CellResult]] | None:
    """Plan, validate, evaluate every cell, write the run folder. Returns the run and its cells (None: --dry-run)."""
    from ..profiling.timers import cpu_threads
    from .tasks import check_tasks_available, task_manager

    check_run_config(config)
    ranks = ranks_from_env()
    if ranks.distributed and launch.launcher is not None:
        raise UsageError(
            f"--launcher {launch.launcher} inside a launch of {ranks.world_size} processes (torchrun, WORLD_SIZE): "
            "start the launcher alone; `--gpus-per-cell K` runs each of its cells in K processes"
        )
    target = config.resume or config.output
    if not launch.dry_run:
        check_writable_dir(target, "--resume" if config.resume else "--output")
    cells = plan_cells(config)
    if config.data_dir and not Path(config.data_dir).is_dir():
        raise UsageError(f"--data-dir {config.data_dir} is not a folder")
    # lmms-eval's task YAMLs read the mirror's folder from the environment
    threads = ranks.threads_each(config.threads) if config.device.startswith("cpu") else config.threads
    with _data_dir_scope(config.data_dir), cpu_threads(threads):
        manager = task_manager(config.include_paths)
        check_tasks_available(manager, config.tasks, config.data_dir)  # before any model loads
        tasks, groups = expand_tasks(manager, config.tasks)
        planned = plan(config, cells, tasks)
        if launch.dry_run:
            if not ranks.writes:
                return None
            existing = launch.cells and Path(config.output).is_dir() and load_run(config.output)
            existing = existing or (config.resume and load_run(config.resume))
            done = {c.key: c for c in existing.merged_cells()[0]} if existing else {}
            print_plan(planned, combination_problems(cells), done)
            return None
        check_combinations(cells)
        with process_group(ranks, config.device):
            if launch.cells:
                if launch.cells == (FROM_STDIN,) and ranks.distributed:
                    raise UsageError("--cells -: a data-parallel launch names its cells (--cells ID,...)")
                chosen = (
                    cells_from(sys.stdin, planned) if launch.cells == (FROM_STDIN,) else select(planned, launch.cells)
                )
                outcome = _run_worker(config, command, chosen, groups, manager, ranks)
                return outcome if ranks.writes else None
            if ranks.distributed:
                return _run_in_ranks(config, command, planned, groups, manager, ranks)
            return _coordinate(config, command, planned, groups, manager, launch)


def _coordinate(config: RunConfig, command, planned: list[PlannedCell], groups, manager, launch: Launch):
    """The run's coordinator: open (or resume) the run, run its cells with the launcher asked for, end the run."""
    run = _open_run(config, command)
    with run.lock():
        _begin(run, config)
        if launch.launcher == "slurm":
            from .slurm import run_slurm

            if not run_slurm(run, config, planned, launch):  # detached: a job after the array ends the run
                return run, run.merged_cells()[0]
        elif launch.launcher is not None:
            from .local import run_local

            run_local(run, config, planned, launch)
        else:
            stamp = process_stamp(config.device, INPROCESS)
            stamp["worker"] = "main"
            _run_planned(run, planned, groups, config, manager, stamp, shared=True, ranks=Ranks())
        finish_run(run)
    return run, run.cells()


def _begin(run: RunDir, config: RunConfig) -> None:
    """A coordinator's first steps in its run, under the run's lock: a resumed run's cells merged and prepared."""
    if config.resume:
        run.merge()  # cells a launcher's workers recorded and no coordinator merged
        for note in run.prepare_resume():
            print(f"vistog-bench run: {note}", file=sys.stderr)
    print(f"vistog-bench run: {run.path} (library output: {run.path / LOG_FILE})", file=sys.stderr)


def _run_in_ranks(config: RunConfig, command, planned: list[PlannedCell], groups, manager, ranks: Ranks):
    """The in-process sweep in every rank of a data-parallel launch (run/ranks.py): rank 0 opens the run, holds its
    lock, records and ends it; every rank evaluates every cell. Returns rank 0's run and cells (None elsewhere)."""
    run = from_writer(ranks, lambda: _open_run(config, command))  # the other ranks get rank 0's, to read and log in
    with held_by_writer(ranks, run.lock):
        if ranks.writes:
            _begin(run, config)
        stamp = process_stamp(config.device, INPROCESS, ranks=ranks.world_size)
        stamp["worker"] = "main"
        _run_planned(run, planned, groups, config, manager, stamp, shared=True, ranks=ranks)
        if ranks.writes:
            finish_run(run)
    return (run, run.cells()) if ranks.writes else None


def finish_run(run: RunDir) -> None:
    """A run's end, by its coordinator (holding its lock) once every cell has ended: metrics.json and profile.jsonl
    merged from the cells' files, the manifest's end time."""
    run.merge()
    run.merge_profile()
    run.write_manifest(dataclasses.replace(run.manifest(), finished_at=now()))


def _run_planned(
    run: RunDir,
    planned: list[PlannedCell],
    groups,
    config: RunConfig,
    manager,
    stamp: dict,
    shared: bool,
    ranks: Ranks,
) -> None:
    """Run every task of `planned` not yet recorded ok, cell by cell, in this process (and in every rank of a
    data-parallel launch: the tasks left are rank 0's reading of the run)."""
    limits = task_limits(manager, planned[0].tasks, config.limit) if planned else {}
    done = from_writer(ranks, lambda: {c.key for c in run.merged_cells()[0] if c.ok})
    for p in planned:
        cell, sink = p.cell, CellSink(run, p, stamp, shared, rank=ranks.rank)
        todo = [t for t in p.tasks if CellKey(t, cell.method, cell.budget) not in done]
        if todo:
            if ranks.writes:
                keep = {CellKey(t, cell.method, cell.budget) for t in p.tasks if t not in todo}
                run.begin_plan_cell(p.stem, keep)
            _run_cell(sink, cell, todo, config, manager, limits, ranks)
        if ranks.writes:
            _record_groups(sink, cell, groups, done)


def _run_worker(config: RunConfig, command, planned, groups, manager, ranks: Ranks):
    """The worker entry (`--cells`): run the cells of `planned` (a list, or `cells_from` standard input) into the run
    folder `config.output` (created when new), beside other workers: each cell under its own lock, into its own
    files; the coordinator (or `report`) merges. In a data-parallel launch (a SLURM cell's K tasks) every rank runs
    the cells and rank 0 writes."""
    run = from_writer(ranks, lambda: _open_worker_run(config, command))
    stamp = process_stamp(config.device, ranks=ranks.world_size)
    ran = []
    for p in planned:
        with held_by_writer(ranks, lambda stem=p.stem: run.cell_lock(stem)):
            _run_planned(run, [p], groups, config, manager, stamp, shared=False, ranks=ranks)
        ran.append(p)
        announce_done(p)
    if not ranks.writes:
        return None
    planned = ran
    cells = {c.key: c for c in run.merged_cells()[0]}
    mine = [cells[k] for p in planned for t in p.tasks if (k := CellKey(t, p.cell.method, p.cell.budget)) in cells]
    return run, mine


def _open_worker_run(config: RunConfig, command: list[str] | None) -> RunDir:
    """The run folder --output names for a worker: an existing one, or a new one whose manifest the first worker
    to get there writes (created whole or not at all: a link of the written file, refused where one exists)."""
    run = RunDir(Path(config.output))
    if not (run.path / MANIFEST_FILE).is_file():
        run.path.mkdir(parents=True, exist_ok=True)
        _write_manifest_once(run, config, command)
    return load_run(run.path)


@contextlib.contextmanager
def _data_dir_scope(data_dir: str | None):
    """$VISTOG_DATA_DIR set to `data_dir` for the sweep, as it was afterwards (the process is not left changed)."""
    from .offline_data import DATA_DIR_ENV

    if not data_dir:
        yield
        return
    previous = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(Path(data_dir).resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = previous


def _open_run(config: RunConfig, command: list[str] | None) -> RunDir:
    """The run folder: the one being resumed (same settings), or a new one with its manifest."""
    if config.resume:
        run = load_run(config.resume)
        saved = config_from_manifest(run.manifest().config)
        if comparable(saved) != comparable(config):
            raise UsageError(
                f"--resume {config.resume}: that run was made with a different configuration "
                f"({config_differences(saved, config)})"
            )
        return run
    run = RunDir(Path(config.output) / new_run_id())
    run.path.mkdir(parents=True, exist_ok=False)
    run.write_manifest(_new_manifest(run, config, command))
    return run


def _new_manifest(run: RunDir, config: RunConfig, command: list[str] | None) -> RunManifest:
    from ..profiling import device_facts

    return RunManifest(
        run_id=run.path.name,
        command=command or sys.argv,
        config=dataclasses.asdict(config),
        git_sha=git_sha(),
        versions=package_versions(),
        device=device_facts(config.device),
        seed=config.seed,
        started_at=now(),
    )


def _write_manifest_once(run: RunDir, config: RunConfig, command: list[str] | None) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=run.path, prefix=".manifest.", suffix=".tmp")
    os.close(fd)
    try:
        write_json(Path(tmp), dataclasses.asdict(_new_manifest(run, config, command)))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, run.path / MANIFEST_FILE)
    finally:
        os.unlink(tmp)


def _record(sink: CellSink, cell: Cell, result: CellResult) -> None:
    """Write the record of a task's `result` under `cell` (which stamps its family's budget rule), then its one
    console line (rank 0's only, in a data-parallel launch)."""
    if not sink.writes:
        return
    result = sink.record(dataclasses.replace(result, budget_rule=cell.budget_rule))
    shown = ", ".join(f"{k.split(',')[0]}={v:.4g}" for k, v in list(result.metrics.items())[:2])
    failed = f", {result.n_failed} failed" if result.n_failed else ""
    if result.mean_visual_tokens is not None:
        failed += f", tokens {result.mean_visual_tokens:.6g} of {result.mean_visual_tokens_unreduced:.6g} per image"
    took = f" [{result.elapsed_s:.1f} s]" if result.elapsed_s is not None else ""
    print(
        f"  {result.task} {result.method}@{result.budget}: {result.status} (n={result.n_samples}{failed})"
        + (f" {shown}" if shown else "")
        + took,
        file=sys.stderr,
    )


def _record_groups(sink: CellSink, cell: Cell, groups: list[TaskGroup], done: set) -> None:
    """The cells of the groups with an aggregate of their own, from their members' cells (once all are recorded)."""
    members = {c.task: c for c in sink.cells() if (c.method, c.budget) == (cell.method, cell.budget)}
    for group in groups:
        if group.aggregate and CellKey(group.name, cell.method, cell.budget) not in done:
            _record(sink, cell, group_cell(group, cell.method, cell.budget, members))


def _run_cell(
    sink: CellSink, cell: Cell, tasks: list[str], config: RunConfig, manager, limits: dict, ranks: Ranks
) -> None:
    """Load the model once for (method, budget), then evaluate each task; every outcome is recorded. In a
    data-parallel launch every rank runs this with its own device, and what fails in one rank fails the step in all
    (`first`); rank 0 records."""
    from ..adapter import process_device, serve_checkpoint
    from ..profiling import RequestProfiler

    log_path = sink.log_path
    started = time.perf_counter()
    served, failure = None, None
    try:
        device = process_device(config.device)  # a rank's own GPU (LOCAL_RANK); alone, --device as given
        with third_party_output_to(log_path):
            served = serve_checkpoint(
                cell.checkpoint,
                method=cell.method,
                budget=cell.served_budget,
                device=device,
                dtype=config.dtype,
                seed=config.seed,
                chat_template=config.chat_template,
            )
    except Exception as exc:  # noqa: BLE001 - a model that does not load fails its own cells; the sweep goes on
        reason = f"loading {cell.checkpoint}: {type(exc).__name__}: {exc}"
        failure = STATUS_OOM if _is_oom(exc) else failed_status(reason)
    failure = first(ranks, failure)
    if failure is not None:
        for task in tasks:
            _record(
                sink, cell, CellResult(task, cell.method, cell.budget, failure, elapsed_s=time.perf_counter() - started)
            )
        del served
        _release_memory(config.device)
        return
    _note_prompt_template(sink, served)
    profiler = RequestProfiler(served.model, device=device, applied=served.applied) if config.profile else None
    for task in tasks:
        started = time.perf_counter()
        lm, results, failed = None, None, None
        try:
            with third_party_output_to(log_path), profiler.attached() if profiler else contextlib.nullcontext():
                lm, task_dict = _task_adapter(served, profiler, task, config, manager)
                task_files = sink.run.task_files(sink.planned.stem, task)
                limit = limits.get(task, config.limit)
                results = _evaluate_task(lm, task_dict, limit, config, manager, task_files, ranks)
        except Exception as exc:  # noqa: BLE001 - a failed task is a failed cell; the sweep goes on
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                raise  # a full disk ends the run (exit 3), it is not this cell's failure
            failed = _failed_cell(cell, task, exc, lm.take_sample_log() if lm else [], started)
        finally:
            if profiler is not None:
                # the cell's budget: a family's `none` is served with none (every token); every rank's requests
                records = [r for rank in share(ranks, profiler.take_records()) for r in rank]
                sink.profile([dataclasses.replace(r, task=r.task or task, budget=cell.budget) for r in records])
        failed = first(ranks, failed)
        if failed is not None:
            _record(sink, cell, failed)
            _release_memory(config.device)
            continue
        if ranks.writes:
            _record_task(
                sink, cell, task, results, lm.take_sample_log(), time.perf_counter() - started, served.cell_facts()
            )
    del served, profiler, lm  # every reference to this cell's model: the next cell loads only after it is gone
    _release_memory(config.device)


def _error_reason(exc: BaseException) -> str:
    """`Type: message` of a task's error, with its direct cause where it has one; tenacity's RetryError (lmms-eval
    retries loading a dataset and raises `RetryError[<Future ...>]`, which says nothing of what failed) is replaced
    by the error of its last attempt."""
    last = getattr(exc, "last_attempt", None)
    inner = last.exception() if last is not None and hasattr(last, "exception") else None
    exc = inner if isinstance(inner, BaseException) else exc
    reason = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:  # datasets' DatasetGenerationError says only "an error occurred"
        reason += f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})"
    return reason


def _failed_cell(cell: Cell, task: str, exc: Exception, samples: list[dict], started: float) -> CellResult:
    failures = [e for e in samples if e.get("failure")]
    reason = _error_reason(exc)
    if failures:
        reason += f" ({len(failures)} sample(s) had failed, first: {failures[0]['failure']})"
    status = STATUS_OOM if _is_oom(exc) else failed_status(reason)
    return CellResult(
        task, cell.method, cell.budget, status, elapsed_s=time.perf_counter() - started, n_failed=len(failures)
    )


def _record_task(
    sink: CellSink, cell: Cell, task: str, results: dict | None, samples: list[dict], elapsed_s: float, facts: dict
) -> None:
    """A task's cell and its sample lines, from lmms-eval's results and the adapter's sample log (a family's cell
    also records the mean visual tokens per image, received and unreduced), with the served model's `facts`
    (ServedModel.cell_facts: attention kernels, budget convention)."""
    failures = [
        reason for _, reason in sorted({e["doc_id"]: e["failure"] for e in samples if e.get("failure")}.items())
    ]
    if results is None:
        _record(
            sink,
            cell,
            CellResult(
                task, cell.method, cell.budget, failed_status("lmms-eval returned nothing"), n_failed=len(failures)
            ),
        )
        return
    lines = sample_lines(results.get("samples", {}).get(task, []), samples)
    write_jsonl(sink.run.samples_path(CellKey(task, cell.method, cell.budget)), lines)
    result = cell_from_lmms_results(task, cell.method, cell.budget, results, elapsed_s, failures)
    _record(sink, cell, dataclasses.replace(result, **token_means(lines), **facts))


def _release_memory(device: str) -> None:
    """Free what the last cell held before the next one loads: collect cycles, hand CUDA's cached blocks back and ask
    glibc to return freed heap pages to the system (a model's weights, freed, otherwise stay in this process's RSS)."""
    import ctypes
    import gc

    import torch

    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)  # the sweep's GPU: a bare synchronize() syncs (and opens a context on) cuda:0
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc's allocator
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass
