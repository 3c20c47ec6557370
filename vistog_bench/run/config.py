"""A sweep's settings (`RunConfig`) and what a resumed run keeps of them: `--resume RUN` redoes only cells that are
not ok, with the run's own settings; a setting given with another value is refused, since the cells already recorded
would not be comparable with the new ones.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..results import load_run

# Keys of RunConfig that may differ between a run and its resumption (`report`: a resumed run renders its report only
# when the run itself did, and --no-report given to the resumption also holds).
RESUME_FREE_KEYS = ("output", "resume", "report")
# Settings a resumed run keeps from its manifest: giving another value is refused (RunConfig field -> option).
RESUME_KEPT_OPTIONS = {
    "limit": "--limit",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "device": "--device",
    "dtype": "--dtype",
    "max_frames": "--max-frames",
    "chat_template": "--chat-template",
    "data_dir": "--data-dir",
    "threads": "--threads",
}
DEFAULT_BATCH_SIZE, DEFAULT_SEED, DEFAULT_MAX_FRAMES = 1, 0, 8


@dataclass(frozen=True)
class RunConfig:
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    dtype: str = "float32"
    output: str = "results"
    data_dir: str | None = None
    include_paths: tuple[str, ...] = ()
    max_frames: int = DEFAULT_MAX_FRAMES
    seed: int = DEFAULT_SEED
    bootstrap_iters: int = 1000
    profile: bool = True
    resume: str | None = None
    chat_template: str | None = None
    threads: int | None = None  # torch CPU threads for the sweep (None: torch's own count)
    report: bool = True  # render <run>/report/ at the end (`--no-report`: False)


def comparable(config: RunConfig) -> dict:
    data = dataclasses.asdict(config)
    for key in RESUME_FREE_KEYS:
        data.pop(key)
    return json.loads(json.dumps(data))


def config_differences(saved: RunConfig, config: RunConfig) -> str:
    """`key: saved -> given` for every setting that differs (resume-free keys left out)."""
    before, after = comparable(saved), comparable(config)
    return ", ".join(
        f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(after) if before.get(k) != after.get(k)
    )


def config_from_manifest(data: dict) -> RunConfig:
    """The RunConfig a run's manifest recorded (JSON lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def check_device(device: str) -> str:
    """`device` when a sweep can run on it (cpu, cuda, cuda:N); a UsageError in one line otherwise."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return device


def chat_template_path(text: str | None) -> str | None:
    if text is None:
        return None
    if not Path(text).is_file():
        raise UsageError(f"--chat-template {text}: no such file")
    return str(Path(text).resolve())


def resumed_config(args) -> RunConfig:
    """`--resume RUN` without sweep arguments: the run's own configuration. A setting given with another value than
    the run was made with is refused: the cells already recorded would not be comparable with the new ones."""
    saved = config_from_manifest(load_run(args.resume).manifest().config)
    given = {
        "limit": args.limit,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "max_frames": args.max_frames,
        "chat_template": chat_template_path(args.chat_template),
        "data_dir": args.data_dir,
        "threads": args.threads,
    }
    if (
        args.data_dir is not None
        and saved.data_dir is not None
        and Path(args.data_dir).resolve() == Path(saved.data_dir).resolve()
    ):
        given["data_dir"] = saved.data_dir  # the same folder, however it is spelt
    clashes = [
        f"{RESUME_KEPT_OPTIONS[key]} {value} (the run used {getattr(saved, key)})"
        for key, value in given.items()
        if value is not None and value != getattr(saved, key)
    ]
    if clashes:
        raise UsageError(f"--resume {args.resume}: a resumed run keeps its own settings; got {'; '.join(clashes)}")
    return dataclasses.replace(saved, resume=args.resume)


def check_counts(limit: int | None, batch_size: int | None, max_frames: int | None) -> None:
    """--limit, --batch-size and --max-frames, each where given (None: not given)."""
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be positive, got {limit}")
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames must be at least 1, got {max_frames}")


def check_run_config(config: RunConfig) -> None:
    """Settings that no sweep can use, refused in one line before anything is read or written."""
    check_counts(config.limit, config.batch_size, config.max_frames)
    check_device(config.device)
    if config.chat_template is not None and not Path(config.chat_template).is_file():
        raise UsageError(f"--chat-template {config.chat_template}: no such file")
    if config.threads is not None and config.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {config.threads}")


def embedded_default(
    tasks: tuple[str, ...] = (), budgets: tuple[int, ...] = (), methods: tuple[str, ...] = ()
) -> tuple[list[Path], tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """The committed tiny LLaVA and VisToG checkpoints on the synthetic shapes tasks (test split): all three tasks,
    every committed budget and `vistog` unless `tasks` / `budgets` / `methods` narrow or change the sweep."""
    from .. import demo

    tasks = demo.check_tasks(tasks) if tasks else demo.DEMO_TASKS
    methods = methods or ("vistog",)
    budgets = budgets or (demo.FULL_BUDGET, *demo.available_budgets())
    vistog_budgets = [b for b in budgets if b != demo.FULL_BUDGET] if "vistog" in methods else []
    models = [demo.checkpoint_for_budget(None), *(demo.checkpoint_for_budget(b) for b in vistog_budgets)]
    demo.ensure_test_data()
    return models, tasks, budgets, methods


__all__ = [
    "check_counts",
    "check_run_config",
    "embedded_default",
    "RunConfig",
    "comparable",
    "config_differences",
    "config_from_manifest",
    "chat_template_path",
    "check_device",
    "resumed_config",
    "RESUME_FREE_KEYS",
    "RESUME_KEPT_OPTIONS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SEED",
    "DEFAULT_MAX_FRAMES",
]
