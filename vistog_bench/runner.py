"""`vistog-bench run`: methods x budgets x tasks through lmms-eval, written to `results/<run_id>/`.

    vistog-bench run --model PATH [PATH ...] --tasks gqa,textvqa_val --budgets 576,192,128,64 --method vistog

For every (method, budget) the checkpoint is loaded once and configured (VisToG checkpoint with N = budget, or stock
LLaVA with a training-free reducer), wrapped in the `vistog` lmms-eval model with a request profiler attached, and
every task is evaluated by `lmms_eval.evaluator.simple_evaluate` one task at a time, so a task that fails costs only
its own cell. The full-budget stock cell (`none` at the patch count) is always part of the sweep: retention is
measured against it.

Cells are recorded as they finish (atomic writes): a failed task is `failed: <reason>`, out-of-memory is `oom`, and
the sweep goes on. `--resume RUN_DIR` with the same configuration redoes only cells that are not `ok`.
Exit code: 0 all cells ok, 1 some cell failed, 2 bad input.
Without --model: the embedded default (tiny LLaVA + VisToG trained on the synthetic shapes world, no downloads);
--tasks (shapes, shapes_vqa, shapes_caption, shapes_video), --budgets and --method narrow or change that sweep.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .results import (
    STATUS_OK,
    STATUS_OOM,
    CellKey,
    CellResult,
    ProfileRecord,
    RunDir,
    RunManifest,
    failed_status,
    load_run,
    new_run_id,
    write_jsonl,
)

# Keys of RunConfig that may differ between a run and its resumption.
RESUME_FREE_KEYS = ("output", "resume")


@dataclass(frozen=True)
class RunConfig:
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    limit: int | None = None
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    output: str = "results"
    data_dir: str | None = None
    include_paths: tuple[str, ...] = ()
    max_frames: int = 8
    seed: int = 0
    bootstrap_iters: int = 1000
    profile: bool = True
    resume: str | None = None


@dataclass(frozen=True)
class Cell:
    method: str
    budget: int
    checkpoint: str


# -- planning --------------------------------------------------------------------------------------------------------
def _checkpoint_facts(path: str) -> tuple[str, int | None, int]:
    """(model_type, N or None, patch count) from a checkpoint's config.json, validated."""
    from .model.loading import checkpoint_model_type

    model_type = checkpoint_model_type(path)
    config = json.loads((Path(path) / "config.json").read_text())
    vision = config.get("vision_config", {})
    patches = (vision.get("image_size", 336) // vision.get("patch_size", 14)) ** 2
    return model_type, config.get("num_semantic_tokens") if model_type == "vistog" else None, patches


def checkpoint_budgets(models) -> tuple[int, ...]:
    """Each checkpoint's own budget (N for VisToG, the patch count for stock LLaVA), largest first."""
    facts = [_checkpoint_facts(str(m)) for m in models]
    return tuple(sorted({semantic or patches for _, semantic, patches in facts}, reverse=True))


def plan_cells(config: RunConfig) -> list[Cell]:
    """The sweep: `none` at the full budget first, then every other method at every budget below it."""
    from .reducers import check_method

    stock, vistog, patch_counts = None, {}, set()
    for path in config.models:
        model_type, semantic, patches = _checkpoint_facts(path)
        patch_counts.add(patches)
        if semantic is None:
            stock = stock or path
        else:
            vistog.setdefault(semantic, path)
    if len(patch_counts) != 1:
        raise UsageError(f"the checkpoints disagree on the patch count ({sorted(patch_counts)}); sweep one model family")
    full = patch_counts.pop()
    methods = [check_method(m) for m in config.methods]
    for budget in config.budgets:
        if not 0 < budget <= full:
            raise UsageError(f"budget {budget} is out of range: 1..{full} visual tokens (the patch count)")
    cells = []
    if stock is not None:
        cells.append(Cell("none", full, stock))
    elif any(m != "vistog" for m in methods):
        raise UsageError("methods other than vistog, and the full-budget reference, need a stock LLaVA checkpoint among --model")
    for method in methods:
        if method == "none":
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
                cells.append(Cell(method, budget, stock))
    return cells


# -- the manifest ----------------------------------------------------------------------------------------------------
def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ("vistog-bench", "torch", "transformers", "lmms_eval", "datasets", "accelerate")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _comparable(config: RunConfig) -> dict:
    data = dataclasses.asdict(config)
    for key in RESUME_FREE_KEYS:
        data.pop(key)
    return json.loads(json.dumps(data))


# -- lmms-eval results -> cells --------------------------------------------------------------------------------------
def cell_from_lmms_results(task: str, method: str, budget: int, results: dict, elapsed_s: float) -> CellResult:
    """lmms-eval's `results["results"][task]`: `"metric,filter"` values with `"metric_stderr,filter"` beside them."""
    values = results.get("results", {}).get(task)
    if values is None:
        return CellResult(task, method, budget, failed_status("lmms-eval returned no results for this task"))
    metrics, stderr = {}, {}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue  # aliases, and NaN for a sub-metric no sample of this split has (e.g. a question type)
        metric, _, filter_name = key.partition(",")
        if "_stderr" in metric:  # "exact_match_stderr,none", or with the estimator named: "..._stderr_clt,none"
            stderr[f"{metric.split('_stderr')[0]},{filter_name}"] = float(value)
        else:
            metrics[key] = float(value)
    stderr = {key: value for key, value in stderr.items() if key in metrics}
    n_samples = results.get("n-samples", {}).get(task, {}).get("effective", 0)
    return CellResult(task, method, budget, STATUS_OK, metrics, stderr, int(n_samples), round(elapsed_s, 3))


def _sample_lines(samples: list[dict]) -> list[dict]:
    """lmms-eval's logged samples, without the documents (they can hold images)."""
    keep = ("doc_id", "target", "arguments", "resps", "filtered_resps", "input", "token_counts")
    lines = []
    for sample in samples:
        line = {k: sample[k] for k in keep if k in sample}
        if "arguments" in line:
            line["arguments"] = [a for a in line["arguments"] if isinstance(a, (str, int, float, dict, list))]
        line.update({k: v for k, v in sample.items() if k not in line and k != "doc" and isinstance(v, (int, float, str))})
        lines.append(line)
    return lines


# -- running ---------------------------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _evaluate_task(lm, task: str, config: RunConfig, manager, run_path: Path) -> dict:
    import argparse

    from lmms_eval.evaluator import simple_evaluate

    # Tasks that write submission files (TextVQA, MMBench, captions) put them under the run folder, not the cwd.
    lmms_args = argparse.Namespace(output_path=str(run_path), process_with_media=True)
    return simple_evaluate(
        cli_args=lmms_args,
        model=lm,
        tasks=[task],
        limit=config.limit,
        log_samples=True,
        task_manager=manager,
        bootstrap_iters=config.bootstrap_iters,
        random_seed=config.seed,
        numpy_random_seed=config.seed,
        torch_random_seed=config.seed,
        verbosity="WARNING",
    )


def run_sweep(config: RunConfig, command: list[str] | None = None) -> tuple[RunDir, list[CellResult]]:
    """Plan, validate, evaluate every cell, write the run folder. Returns the run and its cells."""
    from . import offline_data
    from .profiling import device_facts
    from .task_catalog import DATA_DIR_ENV, check_task_names, task_manager

    cells = plan_cells(config)
    if config.data_dir:
        if not Path(config.data_dir).is_dir():
            raise UsageError(f"--data-dir {config.data_dir} is not a folder")
        os.environ[DATA_DIR_ENV] = str(Path(config.data_dir).resolve())
    manager = task_manager(config.include_paths)
    check_task_names(manager, list(config.tasks))
    missing = offline_data.check_local_data(list(config.tasks), os.environ.get(DATA_DIR_ENV))
    if missing:
        raise UsageError(missing[0] + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    if config.resume:
        run = load_run(config.resume)
        previous = run.manifest()
        if _comparable(_config_from_manifest(previous.config)) != _comparable(config):
            raise UsageError(f"--resume {config.resume}: that run was made with a different configuration")
    else:
        run_id = new_run_id()
        run = RunDir(Path(config.output) / run_id)
        run.path.mkdir(parents=True, exist_ok=False)
        run.write_manifest(
            RunManifest(
                run_id=run_id,
                command=command or sys.argv,
                config=dataclasses.asdict(config),
                git_sha=_git_sha(),
                versions=_versions(),
                device=device_facts(config.device),
                seed=config.seed,
                started_at=_now(),
            )
        )
    done = {c.key for c in run.cells() if c.ok}
    print(f"vistog-bench run: {run.path}", file=sys.stderr)
    for cell in cells:
        todo = [t for t in config.tasks if CellKey(t, cell.method, cell.budget) not in done]
        if todo:
            _run_cell(run, cell, todo, config, manager)
    manifest = run.manifest()
    run.write_manifest(dataclasses.replace(manifest, finished_at=_now()))
    return run, run.cells()


def _config_from_manifest(data: dict) -> RunConfig:
    """The RunConfig a run's manifest recorded (JSON lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def _run_cell(run: RunDir, cell: Cell, tasks: list[str], config: RunConfig, manager) -> None:
    """Load the model once for (method, budget), then evaluate each task; every outcome is recorded."""
    from .adapter import VisToGLMM
    from .profiling import RequestProfiler

    try:
        lm = VisToGLMM(
            pretrained=cell.checkpoint,
            budget=cell.budget,
            method=cell.method,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            max_frames=config.max_frames,
            seed=config.seed,
        )
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is this cell's outcome, recorded with its reason
        status = STATUS_OOM if _is_oom(exc) else failed_status(f"loading {cell.checkpoint}: {type(exc).__name__}: {exc}")
        for task in tasks:
            run.record_cell(CellResult(task, cell.method, cell.budget, status))
        return
    lm.keep_loaded = True  # several tasks, one load
    profiler = RequestProfiler(lm.model, device=config.device) if config.profile else None
    lm.profiler = profiler
    for task in tasks:
        key = CellKey(task, cell.method, cell.budget)
        started = time.perf_counter()
        failures_before = len(lm.sample_failures)
        try:
            if profiler is not None:
                with profiler.attached():
                    results = _evaluate_task(lm, task, config, manager, run.path)
            else:
                results = _evaluate_task(lm, task, config, manager, run.path)
        except Exception as exc:  # noqa: BLE001 - a failed task is a failed cell; the sweep goes on
            status = STATUS_OOM if _is_oom(exc) else failed_status(f"{type(exc).__name__}: {exc}")
            run.record_cell(CellResult(task, cell.method, cell.budget, status, elapsed_s=time.perf_counter() - started))
            _release_memory()
            continue
        finally:
            if profiler is not None:
                run.append_profile(_take_records(lm, task))
        if results is None:
            run.record_cell(CellResult(task, cell.method, cell.budget, failed_status("lmms-eval returned nothing")))
            continue
        lines = _sample_lines(results.get("samples", {}).get(task, []))
        lines += [{"sample_failure": f} for f in lm.sample_failures[failures_before:]]
        write_jsonl(run.samples_path(key), lines)
        run.record_cell(cell_from_lmms_results(task, cell.method, cell.budget, results, time.perf_counter() - started))
    del lm
    _release_memory()


def _take_records(lm, task: str) -> list[ProfileRecord]:
    records = [dataclasses.replace(r, task=task) for r in lm.profile_records]
    lm.profile_records.clear()
    return records


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- summary ---------------------------------------------------------------------------------------------------------
def summary_table(cells: list[CellResult]) -> str:
    from tabulate import tabulate

    rows = []
    for cell in sorted(cells, key=lambda c: (c.task, c.method != "none", -c.budget, c.method)):
        shown = ", ".join(f"{k.split(',')[0]}={v:.4g}" for k, v in list(cell.metrics.items())[:3])
        rows.append([cell.task, cell.method, cell.budget, cell.status, cell.n_samples, shown])
    return tabulate(rows, headers=["task", "method", "budget", "status", "n", "metrics"], tablefmt="github")


# -- CLI -------------------------------------------------------------------------------------------------------------
def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _budgets(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in _csv(text))
    except ValueError:
        raise UsageError(f"--budgets must be comma-separated integers, got {text!r}") from None


def add_arguments(parser) -> None:
    parser.add_argument("--model", nargs="+",
                        help="checkpoint folder(s): stock LLaVA-1.5 and/or VisToG checkpoints (default: the embedded ones)")
    parser.add_argument("--tasks", help="comma-separated lmms-eval task or group names")
    parser.add_argument("--budgets", help="visual tokens per image, e.g. 576,192,128,64")
    parser.add_argument("--method", default=None, help="comma-separated: none, vistog, pool, random, tome, visionzip, prumerge, fastv")
    parser.add_argument("--limit", type=int, default=None, help="samples per task (for quick runs)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--output", default="results", help="folder that receives <run_id>/")
    parser.add_argument("--data-dir", default=None, help="local mirror of the benchmark datasets (see docs)")
    parser.add_argument("--include-path", action="append", default=[], help="extra lmms-eval task folder")
    parser.add_argument("--max-frames", type=int, default=8, help="frames sampled per video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip per-request profiling")
    parser.add_argument("--no-report", action="store_true", help="do not render the report at the end")
    parser.add_argument("--resume", default=None, help="an interrupted run folder to complete")


def embedded_default(
    tasks: tuple[str, ...] = (), budgets: tuple[int, ...] = (), methods: tuple[str, ...] = ()
) -> tuple[list[Path], tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """The committed tiny LLaVA and VisToG checkpoints on the synthetic shapes tasks (test split): all three tasks,
    every committed budget and `vistog` unless `tasks` / `budgets` / `methods` narrow or change the sweep."""
    from . import demo

    tasks = demo.check_tasks(tasks) if tasks else demo.DEMO_TASKS
    methods = methods or ("vistog",)
    budgets = budgets or (demo.FULL_BUDGET, *demo.available_budgets())
    vistog_budgets = [b for b in budgets if b != demo.FULL_BUDGET] if "vistog" in methods else []
    models = [demo.checkpoint_for_budget(None), *(demo.checkpoint_for_budget(b) for b in vistog_budgets)]
    demo.ensure_test_data()
    return models, tasks, budgets, methods


def config_from_args(args) -> RunConfig:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    no_sweep_arguments = args.model is None and args.tasks is None and args.budgets is None and args.method is None
    if args.resume and no_sweep_arguments:
        saved = _config_from_manifest(load_run(args.resume).manifest().config)
        return dataclasses.replace(saved, resume=args.resume)
    if not args.model:
        models, tasks, budgets, methods = embedded_default(_csv(args.tasks), _budgets(args.budgets), _csv(args.method))
    else:
        if not args.tasks:
            raise UsageError("--tasks is needed with --model (leave both out for the embedded default)")
        models, tasks = tuple(args.model), _csv(args.tasks)
        methods = _csv(args.method) or ("vistog",)
        budgets = _budgets(args.budgets) or checkpoint_budgets(models)
    return RunConfig(
        models=tuple(str(Path(m).resolve()) for m in models),
        tasks=tuple(tasks),
        methods=tuple(methods),
        budgets=tuple(budgets),
        limit=args.limit,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
        output=args.output,
        data_dir=args.data_dir,
        include_paths=tuple(args.include_path),
        max_frames=args.max_frames,
        seed=args.seed,
        profile=not args.no_profile,
        resume=args.resume,
    )


def main(args) -> int:
    config = config_from_args(args)
    run, cells = run_sweep(config, command=["vistog-bench", *sys.argv[1:]])
    print(summary_table(cells))
    if not args.no_report:
        from .report import build_report, write_report

        out = Path("reports") / run.path.name
        write_report(build_report([run.path]), out)
        print(f"report: {out}")
    bad = [c for c in cells if not c.ok]
    print(f"results: {run.path}" + (f" ({len(bad)} cell(s) not ok)" if bad else ""))
    return 1 if bad else 0
