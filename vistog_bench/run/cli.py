"""`vistog-bench run`: methods x budgets x tasks through lmms-eval, written to `results/<run_id>/`.

    vistog-bench run --model PATH [PATH ...] --tasks gqa,textvqa_val --budgets 576,192,128,64 --method vistog

For every (method, budget) the checkpoint is loaded once and configured (VisToG checkpoint with N = budget, or stock
LLaVA with a training-free reducer), wrapped in the `vistog` lmms-eval model with a request profiler attached, and
every task is evaluated by `lmms_eval.evaluator.simple_evaluate` one task at a time, so a task that fails costs only
its own cell. The full-budget stock cell (`none` at the patch count) is always part of the sweep: retention is
measured against it. Every method and every budget asked for gets a cell or is refused before anything loads, one
line each (`vistog` with no VisToG checkpoint among --model; a method whose only budget is the full one; a budget no
requested method runs at, e.g. `--method none --budgets 64`); an empty `--tasks ''` / `--method ''` / `--budgets ''` is
refused, not read as the default. Without --method: `vistog` when a VisToG checkpoint is among --model, else `none`.
A method's options follow its name in brackets, as the report labels its rows (`vistog-bench methods NAME` lists them):
`--method 'tome[order=spatial],pdrop[layers=2,6,12]'`; the label is the cell's method in its record.

A group (`vistog_image_local`, `shapes`, nested ones such as `mvbench_local`) is expanded into its member tasks, each
its own cell with its metrics, samples and profile records; a group whose YAML defines `aggregate_metric_list` also
gets a cell of its own, aggregated from its members' cells as lmms-eval aggregates groups (size-weighted mean, pooled
stderr). MME scores each image's two questions as a pair, so an odd `--limit` is rounded up to even for MME tasks.

Failures cost only what failed. A sample whose image or video cannot be decoded (a file cut short included) fails alone:
lmms-eval post-processes without media (`process_with_media=False`), the adapter serves the sample as failed, and its
requests are taken out before scoring, so the cell is scored on the rest and records `n_failed` beside `n_samples` (the
reason is in the sample log). A cell with no scored sample is never `ok`. A (model, method, budget) that the checkpoint
configs rule out (FastV's layer outside the LLM, PruMerge with the feature layer last) is refused before anything runs,
one line each; a model that fails to load (corrupt weights) fails its own cells with the reason and the sweep goes on. A
failed task is `failed: <reason>`, out-of-memory is `oom`. `--resume RUN_DIR` redoes only cells that are not `ok`,
refuses settings (`--limit`, `--seed`, `--batch-size`, `--device`, ...) other than the run's own, and renders the report
only when the run did (its `--no-report` holds).
Exit code: 0 all cells ok, 1 some cell failed, 2 bad input, 3 the disk filled up.

Console: progress bars, one line per finished cell and the summary table. What lmms-eval, loguru, transformers,
pycocoevalcap / pycocotools and their Java subprocess print while a model loads or a task is evaluated goes to
`<run>/run.log` (redirected at the file-descriptor level, so subprocesses are caught too). The report is written
inside the run folder it describes: `<output>/<run_id>/report/`.

Other families (LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL; `model.families`): budgets follow the family's rule, recorded
per cell as `budget_rule` (NeXT / OneVision `per_image_total`: visual tokens per image summed over its tiles; Qwen2.5-VL
`percent_of_own`: a percentage of each image's own count). Their `none` cell is the full budget, recorded as 100 for a
percentage and, for per-image totals, as the most tokens one image can give on the checkpoint (from its config: base
view, the tiles of its `image_grid_pinpoints`, newline tokens; `ModelFamily.full_budget`). A VisToG checkpoint of
NeXT / OneVision (`vistog_llava_next` / `vistog_llava_onevision`, or an earlier folder with `vistog_family.json`) gives
one `vistog` cell at its N per view (`per_view`); --budgets are the other methods'. Methods a family does not run are
refused before anything loads, one line per cell; checkpoints of different families in one sweep are refused. Each
family cell records the mean visual tokens per image the LLM received and the processor's unreduced count (the sample
lines carry both per image). Their request records carry times and token counts under the cell's budget, no analytic
FLOPs (`profile --shape NAME --analytic`).

Without --model: the embedded default (tiny LLaVA + VisToG trained on the synthetic shapes world, no downloads);
--tasks (shapes, shapes_vqa, shapes_caption, shapes_video), --budgets and --method narrow or change that sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..cli import comma_list, int_list
from ..dtypes import DTYPE_NAMES
from ..errors import UsageError
from ..reducers.registry import method_labels, method_names
from ..results import LAUNCH_FILE, CellResult
from . import slurm
from .config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_FRAMES,
    DEFAULT_SEED,
    RunConfig,
    chat_template_path,
    check_counts,
    check_device,
    embedded_default,
    resumed_config,
)
from .plan import LAUNCHERS
from .sweep import REPORT_DIR, Launch, checkpoint_budgets, default_methods, run_sweep


# -- summary ---------------------------------------------------------------------------------------------------------
def summary_table(cells: list[CellResult]) -> str:
    from tabulate import tabulate

    rows = []
    for cell in sorted(cells, key=lambda c: (c.task, c.method != "none", -c.budget, c.method)):
        shown = ", ".join(f"{k.split(',')[0]}={v:.4g}" for k, v in list(cell.metrics.items())[:3])
        rows.append([cell.task, cell.method, cell.budget, cell.status, cell.n_samples, cell.n_failed, shown])
    return tabulate(rows, headers=["task", "method", "budget", "status", "n", "failed", "metrics"], tablefmt="github")


# -- CLI -------------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        nargs="+",
        help="checkpoint folder(s) of one family: stock LLaVA-1.5 and/or VisToG checkpoints, or stock "
        "LLaVA-NeXT / OneVision / Qwen2.5-VL and their VisToG ones (default: the embedded ones)",
    )
    parser.add_argument("--tasks", help="comma-separated lmms-eval task or group names")
    parser.add_argument(
        "--budgets",
        help="visual tokens per image, e.g. 576,192,128,64 (LLaVA-NeXT / OneVision: "
        "summed over tiles; Qwen2.5-VL: percent of each image's own, 1..100)",
    )
    parser.add_argument(
        "--methods",
        "--method",
        dest="method",
        default=None,
        help=f"comma-separated, options in brackets (quoted: 'tome[order=spatial]'): {', '.join(method_names())} "
        "(vistog-bench methods); default: vistog when a VisToG checkpoint is among --model, else none",
    )
    parser.add_argument("--limit", type=int, default=None, help="samples per task (for quick runs; even for MME)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on CPU, where more stall on shared cores; torch's on a GPU)",
    )
    parser.add_argument("--output", default="results", help="folder that receives <run_id>/")
    parser.add_argument("--data-dir", default=None, help="local mirror of the benchmark datasets (see docs)")
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        help="extra lmms-eval task folder; its tasks' !function tags run its Python: trusted folders only",
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help=f"frames sampled per video (default {DEFAULT_MAX_FRAMES})"
    )
    parser.add_argument("--seed", type=int, default=None, help=f"default {DEFAULT_SEED}")
    parser.add_argument(
        "--chat-template",
        default=None,
        help="a Jinja chat template file for every checkpoint (default: each checkpoint's own)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip per-request profiling")
    parser.add_argument("--no-report", action="store_true", help="do not render the report (<run>/report/) at the end")
    parser.add_argument("--resume", default=None, help="an interrupted run folder to complete")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (cell ids, what is done, what is refused); load nothing"
    )
    parser.add_argument(
        "--launcher",
        default=None,
        help=f"run the cells in worker processes: {', '.join(LAUNCHERS)} (default: in this process)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes of --launcher local, one device each (default 1)"
    )
    parser.add_argument("--retries", type=int, default=None, help="times a cell whose worker died is run again (1)")
    parser.add_argument(
        "--cells",
        default=None,
        help="the worker entry: run only these cell ids (--dry-run lists them) into the run folder --output names; "
        "`-`: the ids read from standard input, one per line, as they come (a local launcher's long-lived worker)",
    )
    parser.add_argument("--detach", action="store_true", help="return once the cells are submitted (batch launchers)")
    slurm.add_arguments(parser)


def _not_empty(text: str | None, flag: str) -> None:
    """A list option given with nothing in it (`--tasks ''`, `--method ,`) is refused: left out, it means the
    default; given empty, running the default would run what was not asked for."""
    if text is not None and not comma_list(text):
        raise UsageError(f"{flag} is empty (got {text!r}); leave it out for the default")


def launch_from_args(args) -> Launch:
    """How the cells run; bad combinations refused in one line before anything loads."""
    launcher = args.launcher
    if launcher is not None and launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher}: unknown launcher (known: {', '.join(LAUNCHERS)})")
    workers = 1 if args.workers is None else args.workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if args.retries is not None and args.retries < 0:
        raise UsageError(f"--retries must be 0 or more, got {args.retries}")
    if args.detach and launcher in (None, "local"):
        raise UsageError(f"--detach needs a batch launcher; --launcher {launcher or 'in-process'} runs until done")
    if workers > 1 and launcher is None:
        launcher = "local"
    cells = comma_list(args.cells)
    if args.cells is not None and not cells:
        raise UsageError("--cells is empty; give cell ids (`--dry-run` lists them)")
    if cells and (launcher is not None or args.resume):
        raise UsageError("--cells runs cells in this process into --output's run folder: no --launcher or --resume")
    return Launch(
        launcher=launcher,
        workers=workers,
        retries=1 if args.retries is None else args.retries,
        cells=cells,
        dry_run=args.dry_run,
        slurm=_slurm_request(args),
        detach=args.detach,
    )


def _check_resumable(args) -> None:
    """--resume of a run whose SLURM jobs are still out is refused (whatever the launcher now)."""
    if args.resume and not args.dry_run and Path(args.resume, LAUNCH_FILE).is_file():
        from ..results import load_run

        slurm.refuse_live_cells(load_run(args.resume))


def _slurm_request(args) -> slurm.SlurmRequest | None:
    """--launcher slurm's request, checked against the cluster (sinfo) before anything is loaded or submitted; the
    device it is checked with: --device, or a resumed run's own."""
    request = slurm.request_from_args(args)
    if request is None:
        return None
    device = args.device
    if device is None and args.resume:
        from ..results import load_run

        device = load_run(args.resume).manifest().config.get("device")
    return slurm.resolve(request, device)


def config_from_args(args, launch: Launch) -> RunConfig:
    import torch

    from ..profiling.timers import default_threads

    check_counts(args.limit, args.batch_size, args.max_frames)
    for text, flag in ((args.tasks, "--tasks"), (args.method, "--method"), (args.budgets, "--budgets")):
        _not_empty(text, flag)
    if args.device is not None:
        check_device(args.device)
    no_sweep_arguments = args.model is None and args.tasks is None and args.budgets is None and args.method is None
    if args.resume and no_sweep_arguments:
        return resumed_config(args)
    local_device = "cuda" if torch.cuda.is_available() else "cpu"
    device = args.device or (slurm.cell_device(launch.slurm) if launch.slurm else local_device)
    # SLURM's cells run on the cluster's nodes, whatever this machine has
    if device.startswith("cuda") and not launch.slurm and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    if not args.model:
        models, tasks, budgets, methods = embedded_default(
            comma_list(args.tasks), int_list(args.budgets, "--budgets"), method_labels(args.method)
        )
    else:
        if not args.tasks:
            raise UsageError("--tasks is needed with --model (leave both out for the embedded default)")
        models, tasks = tuple(args.model), comma_list(args.tasks)
        methods = method_labels(args.method) or default_methods(models)
        budgets = int_list(args.budgets, "--budgets") or checkpoint_budgets(models)
    return RunConfig(
        models=tuple(str(Path(m).resolve()) for m in models),
        tasks=tuple(tasks),
        methods=tuple(methods),
        budgets=tuple(budgets),
        limit=args.limit,
        batch_size=DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size,
        device=device,
        dtype=dtype,
        output=args.output,
        data_dir=args.data_dir,
        include_paths=tuple(args.include_path),
        max_frames=DEFAULT_MAX_FRAMES if args.max_frames is None else args.max_frames,
        seed=DEFAULT_SEED if args.seed is None else args.seed,
        profile=not args.no_profile,
        resume=args.resume,
        chat_template=chat_template_path(args.chat_template),
        threads=args.threads if args.threads is not None else default_threads(device),
        report=not args.no_report,
    )


def main(args) -> int:
    launch = launch_from_args(args)
    _check_resumable(args)
    config = config_from_args(args, launch)
    if launch.launcher == "local" and config.device.startswith("cuda"):
        import torch

        if launch.workers > torch.cuda.device_count():
            raise UsageError(f"--workers {launch.workers}: this node has {torch.cuda.device_count()} CUDA device(s)")
    outcome = run_sweep(config, command=["vistog-bench", *sys.argv[1:]], launch=launch)
    if outcome is None:  # --dry-run, or a rank other than 0 of a data-parallel launch (rank 0 reports)
        return 0
    run, cells = outcome
    if launch.detach:  # the array runs on; the job after it merges the run and writes its report
        print(f"submitted: {run.path} (vistog-bench status {run.path})")
        return 0
    print(summary_table(cells))
    # a resumed run keeps its own --no-report (its manifest's config), and --no-report now also holds; a worker
    # (--cells) leaves the report to whoever merges the run
    if not args.no_report and not launch.cells and run.manifest().config.get("report", True):
        from ..report import build_report, write_report

        out = run.path / REPORT_DIR
        write_report(build_report([run.path]), out)
        print(f"report: {out}")
    bad = [c for c in cells if not c.ok]
    print(f"results: {run.path}" + (f" ({len(bad)} cell(s) not ok)" if bad else ""))
    return 1 if bad else 0
