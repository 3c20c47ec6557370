"""The embedded default: the synthetic shapes world and the tiny LLaVA / VisToG models trained on it.

For the runner:

    checkpoint_dir("tiny-llava")        -> Path of a committed checkpoint (Hugging Face layout)
    checkpoint_for_budget(16)           -> the tiny VisToG checkpoint at that budget (None: the full tiny LLaVA)
    available_budgets()                 -> (16, 4): the VisToG budgets with a committed checkpoint
    FULL_BUDGET                         -> 64, the tiny LLaVA's visual tokens (8 x 8 patches)
    DEMO_TASKS / DEMO_GROUP             -> the lmms-eval task names in tasks/shapes/
    check_tasks(names)                  -> UsageError on an unknown demo task
    ensure_test_data()                  -> the folder of the test-split parquet files (generated at first use)

Test data are not committed: they are a pure function of the generator, written at first use into the cache
(`$VISTOG_BENCH_CACHE`, else `$XDG_CACHE_HOME/vistog-bench`, else `~/.cache/vistog-bench`), in a folder named after
the world's version, so no run ever needs the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UsageError

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKPOINT_DIR = PACKAGE_DIR / "checkpoints"
FULL_CHECKPOINT = "tiny-llava"
FULL_BUDGET = 64
DEMO_TASKS = ("shapes_vqa", "shapes_caption", "shapes_video")
DEMO_GROUP = "shapes"
WORLD_VERSION = "v3"  # bump whenever world.py changes what it generates: the test data are cached by it
# test-split sizes: small enough for `vistog-bench run` on 2 cores, large enough for per-type accuracies
TEST_VQA_IMAGES = 150  # ~4 questions each
TEST_CAPTION_IMAGES = 60
TEST_VIDEO_CLIPS = 80
TEST_FILES = {
    "shapes_vqa": "vqa_test.parquet",
    "shapes_caption": "caption_test.parquet",
    "shapes_video": "video_test.parquet",
}

_VISTOG_NAME = re.compile(r"^tiny-vistog-(\d+)$")


def cache_dir() -> Path:
    root = os.environ.get("VISTOG_BENCH_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vistog-bench"


def available_budgets() -> tuple[int, ...]:
    """VisToG budgets with a committed tiny checkpoint, largest first."""
    budgets = []
    if CHECKPOINT_DIR.is_dir():
        for folder in CHECKPOINT_DIR.iterdir():
            match = _VISTOG_NAME.match(folder.name)
            if match and (folder / "config.json").is_file():
                budgets.append(int(match.group(1)))
    return tuple(sorted(budgets, reverse=True))


def checkpoint_names() -> tuple[str, ...]:
    return (FULL_CHECKPOINT, *(f"tiny-vistog-{b}" for b in available_budgets()))


def checkpoint_dir(name: str) -> Path:
    """The folder of a committed checkpoint, checked to be complete (config, weights, processor)."""
    from ..model.loading import checkpoint_model_type

    names = checkpoint_names()
    if name not in names:
        raise UsageError(f"no embedded checkpoint named {name!r}; available: {', '.join(names)}")
    path = CHECKPOINT_DIR / name
    checkpoint_model_type(path)
    return path


def checkpoint_for_budget(budget: int | None) -> Path:
    """The tiny LLaVA for `None` or the full budget (64), else the tiny VisToG trained at `budget`."""
    if budget is None or budget == FULL_BUDGET:
        return checkpoint_dir(FULL_CHECKPOINT)
    budgets = available_budgets()
    if budget not in budgets:
        allowed = ", ".join(str(b) for b in (FULL_BUDGET, *budgets))
        raise UsageError(f"no tiny VisToG model for budget {budget}; available budgets: {allowed}")
    return checkpoint_dir(f"tiny-vistog-{budget}")


def check_weights(path: str | Path) -> None:
    """UsageError (one line) unless every *.safetensors file in `path` opens and reads."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise UsageError(f"{path} has no *.safetensors weights")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for truncated / garbled files
            raise UsageError(f"corrupted weights file {file}: {str(exc).splitlines()[0]}") from None


def check_tasks(names) -> tuple[str, ...]:
    """The demo task names asked for (the group name expands to the three); UsageError on an unknown one."""
    names = (names,) if isinstance(names, str) else tuple(names)
    expanded = []
    for name in names:
        if name == DEMO_GROUP:
            expanded.extend(DEMO_TASKS)
        elif name in DEMO_TASKS:
            expanded.append(name)
        else:
            raise UsageError(f"unknown demo task {name!r}; available: {', '.join((DEMO_GROUP, *DEMO_TASKS))}")
    return tuple(dict.fromkeys(expanded))


def test_data_dir() -> Path:
    return cache_dir() / "shapes" / WORLD_VERSION / "test"


def ensure_test_data() -> Path:
    """Write the test-split parquet files if missing (deterministic, ~2 s) and return their folder."""
    from . import world

    folder = test_data_dir()
    writers = {
        "shapes_vqa": lambda: world.vqa_records("test", TEST_VQA_IMAGES),
        "shapes_caption": lambda: world.caption_records("test", TEST_CAPTION_IMAGES, offset=TEST_VQA_IMAGES),
        "shapes_video": lambda: world.video_records("test", TEST_VIDEO_CLIPS),
    }
    for task, make_rows in writers.items():
        path = folder / TEST_FILES[task]
        if not path.is_file():
            world.write_parquet(make_rows(), path)
    return folder


def test_data_file(task: str) -> Path:
    (task,) = check_tasks(task) if task != DEMO_GROUP else (None,)
    if task is None:
        raise UsageError(f"{DEMO_GROUP!r} is a group; name one of: {', '.join(DEMO_TASKS)}")
    return ensure_test_data() / TEST_FILES[task]


__all__ = [
    "CHECKPOINT_DIR",
    "FULL_CHECKPOINT",
    "FULL_BUDGET",
    "DEMO_TASKS",
    "DEMO_GROUP",
    "cache_dir",
    "available_budgets",
    "checkpoint_names",
    "checkpoint_dir",
    "checkpoint_for_budget",
    "check_weights",
    "check_tasks",
    "ensure_test_data",
    "test_data_file",
]
