"""Task names: lmms-eval's built-ins, ours in `vistog_bench/tasks/` (always on the include path), users' `--include-path`.

`vistog-bench tasks [--include-path DIR ...] [--filter TEXT]` lists them; `vistog-bench tasks --path` prints the folder
of ours, for lmms-eval's own CLI (`--include_path "$(vistog-bench tasks --path)"`).

Our task YAMLs (and the utils.py / mirror.py their `!function` tags name) ship inside the package, so a wheel install
finds them where an editable one does: `importlib.resources` gives the folder, lmms-eval reads it as files.
`check_tasks_available` is the runner's one pre-flight call: names known, and every task's data on this machine
before any model loads.
"""

from __future__ import annotations

import difflib
import importlib.resources
import logging
import os
from pathlib import Path

from .errors import UsageError

# A real folder in both an editable and a wheel install (lmms-eval walks it with os.walk and opens files by path).
PROJECT_TASKS = Path(str(importlib.resources.files("vistog_bench").joinpath("tasks")))
DATA_DIR_ENV = "VISTOG_DATA_DIR"


def include_paths(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Our `vistog_bench/tasks/` first, then the user's folders (which must exist)."""
    for path in extra:
        if not Path(path).is_dir():
            raise UsageError(f"--include-path {path} is not a folder")
    return [str(PROJECT_TASKS), *[str(Path(p).resolve()) for p in extra]]


def quiet_lmms_eval() -> None:
    """lmms-eval logs every task YAML it indexes; keep warnings and errors only (called at run time, never at import)."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("VISTOG_LMMS_LOG_LEVEL", "WARNING"))
    logging.getLogger("lmms-eval").setLevel(logging.WARNING)


def task_manager(extra_include: list[str] | tuple[str, ...] = ()):
    from lmms_eval.tasks import TaskManager

    quiet_lmms_eval()
    return TaskManager(verbosity="WARNING", include_path=include_paths(extra_include))


def check_task_names(manager, names: list[str]) -> None:
    """Unknown names raise one UsageError naming each with its nearest known names."""
    known = set(manager.all_tasks)
    problems = []
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            problems.append(f"{name!r}" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    if problems:
        raise UsageError(f"unknown task {'; '.join(problems)}; `vistog-bench tasks` lists what is available")


def add_arguments(parser) -> None:
    parser.add_argument("--include-path", action="append", default=[], help="extra lmms-eval task folder")
    parser.add_argument("--filter", default="", help="show names containing this text")
    parser.add_argument("--path", action="store_true",
                        help="print the folder of vistog-bench's task YAMLs (for lmms-eval's --include_path) and exit")


def main(args) -> int:
    if args.path:
        print(PROJECT_TASKS)
        return 0
    manager = task_manager(args.include_path)
    ours = PROJECT_TASKS.resolve()
    rows = []
    for name in sorted(manager.all_tasks):
        if args.filter and args.filter not in name:
            continue
        entry = manager.task_index[name]
        path = Path(entry.get("yaml_path", "")) if isinstance(entry.get("yaml_path"), str) else None
        origin = "vistog-bench" if path and ours in path.resolve().parents else ("lmms-eval" if path and "lmms_eval" in str(path) else "user")
        rows.append(f"{name:45s} {entry['type']:7s} {origin}")
    print("\n".join(rows) if rows else "no task matches")
    return 0
