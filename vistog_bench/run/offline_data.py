"""Where the offline (`*_local`) lmms-eval tasks find their data, and an early check that it is there.

A local mirror is a folder (`--data-dir`, exported as `$VISTOG_DATA_DIR`) holding copies of the hub datasets that
lmms-eval's built-in tasks read, in the hub repos' own file layout:

    <data_dir>/lmms-lab/GQA/testdev_balanced_instructions/testdev-00000-of-00001.parquet
    <data_dir>/lmms-lab/GQA/testdev_balanced_images/testdev-00000-of-00001.parquet
    <data_dir>/lmms-lab/Video-MME/videomme/test-00000-of-00001.parquet + data/<videoID>.mp4
    ...

The task YAMLs in `tasks/offline/` ask `data_files(task)` for their parquet/json files when lmms-eval
builds the task (through `tasks/offline/mirror.py`), so the data dir is read at that moment, not when the
tasks are indexed. `check_local_data` gives the runner one message per missing file, empty table or missing column
before any model is loaded.
docs/offline-data.md lists every file each task needs.
"""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from vistog_bench.errors import UsageError

DATA_DIR_ENV = "VISTOG_DATA_DIR"
DOC = "docs/offline-data.md"
MAX_MEDIA_MESSAGES = 5  # per task; a mirror missing its videos would otherwise print thousands of lines
GQA_IMAGES = "testdev_balanced_images parquet"  # GQA's second table, as messages name it


class MissingLocalData(UsageError):
    """A local task's mirror files are not where the task reads them; the message says what to copy where."""


@dataclass(frozen=True)
class LocalTask:
    """One offline task: which built-in it mirrors and which files of which hub repo it reads."""

    name: str
    builtin: str
    repo: str  # hub dataset name and the folder under the data dir
    split: str  # the split name the YAML's test_split uses
    patterns: tuple[str, ...]  # globs relative to the repo folder; the first that matches wins
    aliases: tuple[str, ...] = ()  # other hub names of the same data (the installed lmms-eval's dataset_path)
    what: str = ""  # how to describe the table in messages
    images: tuple[str, ...] = ()  # GQA: the separate image table, joined on imageId
    media: str = ""  # video tasks: "<column>:<folder template>" checked per row, see media_paths()
    # the columns lmms-eval's task functions read from each row (docs/offline-data.md, "Columns the tasks read"); the
    # hub schemas, which vistog_bench.testing.fixtures reproduces, have these and more
    columns: tuple[str, ...] = ()
    image_columns: tuple[str, ...] = ()  # GQA's image table


def _parquet(config: str | None, split: str) -> tuple[str, ...]:
    """Where the hub keeps a config's split: `<config>/<split>-*.parquet`, or `data/<split>-*.parquet`."""
    found = (f"{config}/{split}-*.parquet",) if config else ()
    return found + (f"data/{split}-*.parquet",)


# MVBench's video folders per subtask, as lmms-eval's mvbench utils name them (relative to the extracted repo).
MVBENCH_SUBTASKS = (
    "action_sequence",
    "moving_count",
    "action_prediction",
    "episodic_reasoning",
    "action_antonym",
    "action_count",
    "scene_transition",
    "object_shuffle",
    "object_existence",
    "fine_grained_pose",
    "unexpected_action",
    "moving_direction",
    "state_change",
    "object_interaction",
    "character_order",
    "action_localization",
    "counterfactual_inference",
    "fine_grained_action",
    "moving_attribute",
    "egocentric_navigation",
)


def _tasks() -> dict[str, LocalTask]:
    specs = [
        LocalTask(
            "gqa_local",
            "gqa",
            "lmms-lab/GQA",
            "testdev",
            _parquet("testdev_balanced_instructions", "testdev"),
            ("lmms-lab-encoder/GQA",),
            "testdev_balanced_instructions parquet",
            images=_parquet("testdev_balanced_images", "testdev"),
            columns=("imageId", "question", "answer"),
            image_columns=("id", "image"),
        ),
        LocalTask(
            "textvqa_val_local",
            "textvqa_val",
            "lmms-lab/textvqa",
            "validation",
            _parquet(None, "validation"),
            ("lmms-lab-encoder/textvqa",),
            "validation parquet",
            columns=("image", "question", "question_id", "answers", "ocr_tokens"),
        ),
        LocalTask(
            "vqav2_val_local",
            "vqav2_val",
            "lmms-lab/VQAv2",
            "validation",
            _parquet(None, "validation"),
            ("lmms-lab-encoder/VQAv2",),
            "validation parquet",
            columns=("image", "question", "question_id", "answers"),
        ),
        LocalTask(
            "pope_local",
            "pope",
            "lmms-lab/POPE",
            "test",
            _parquet(None, "test"),
            ("lmms-lab-encoder/POPE",),
            "test parquet",
            columns=("image", "question", "question_id", "answer", "category"),
        ),
        LocalTask(
            "mme_local",
            "mme",
            "lmms-lab/MME",
            "test",
            _parquet(None, "test"),
            ("lmms-lab-encoder/MME",),
            "test parquet",
            columns=("image", "question", "question_id", "answer", "category"),
        ),
        LocalTask(
            "scienceqa_img_local",
            "scienceqa_img",
            "lmms-lab/ScienceQA",
            "test",
            _parquet("ScienceQA-IMG", "test"),
            ("lmms-lab-encoder/ScienceQA",),
            "ScienceQA-IMG test parquet",
            columns=("image", "question", "hint", "choices", "answer"),
        ),
        LocalTask(
            "mmbench_en_dev_local",
            "mmbench_en_dev",
            "lmms-lab/MMBench",
            "dev",
            _parquet("en", "dev"),
            ("lmms-lab-encoder/MMBench",),
            "en dev parquet",
            columns=(
                "index",
                "image",
                "question",
                "hint",
                "A",
                "B",
                "C",
                "D",
                "answer",
                "category",
                "L2-category",
                "source",
                "split",
            ),
        ),
        LocalTask(
            "coco2017_cap_val_local",
            "coco2017_cap_val",
            "lmms-lab/COCO-Caption2017",
            "val",
            _parquet(None, "val"),
            ("lmms-lab-encoder/COCO-Caption2017",),
            "val parquet",
            columns=("image", "question_id", "id", "answer"),
        ),
        LocalTask(
            "nocaps_val_local",
            "nocaps_val",
            "lmms-lab/NoCaps",
            "validation",
            _parquet(None, "validation"),
            ("lmms-lab-encoder/NoCaps",),
            "validation parquet",
            columns=("image", "image_id", "annotations_captions"),
        ),
        LocalTask(
            "flickr30k_test_local",
            "flickr30k_test",
            "lmms-lab/flickr30k",
            "test",
            _parquet(None, "test"),
            ("lmms-lab-encoder/flickr30k",),
            "test parquet",
            columns=("image", "img_id", "caption"),
        ),
        LocalTask(
            "videomme_local",
            "videomme",
            "lmms-lab/Video-MME",
            "test",
            _parquet("videomme", "test"),
            ("lmms-eval/Video-MME",),
            "videomme test parquet",
            media="videoID:data/{}.mp4",
            columns=(
                "videoID",
                "question",
                "options",
                "answer",
                "question_id",
                "duration",
                "domain",
                "sub_category",
                "task_type",
            ),
        ),
        LocalTask(
            "nextqa_mc_test_local",
            "nextqa_mc_test",
            "lmms-lab/NExTQA",
            "test",
            _parquet("MC", "test"),
            ("lmms-eval/NExTQA",),
            "MC test parquet",
            media="video:NExTVideo/{}.mp4",
            columns=("video", "question", "a0", "a1", "a2", "a3", "a4", "answer"),
        ),
    ]
    # MMBench without the GPT judge (lmms-eval's mmbench_en_dev_static): the same data, for machines with no API.
    mmb = specs[6]
    specs.append(
        LocalTask(
            "mmbench_en_dev_static_local",
            "mmbench_en_dev_static",
            mmb.repo,
            mmb.split,
            mmb.patterns,
            mmb.aliases,
            mmb.what,
            columns=mmb.columns,
        )
    )
    for sub in MVBENCH_SUBTASKS:
        specs.append(
            LocalTask(
                f"mvbench_{sub}_local",
                f"mvbench_{sub}",
                "OpenGVLab/MVBench",
                "train",
                (f"json/{sub}.json",),
                (),
                f"json/{sub}.json",
                media=f"video:{{mvbench:{sub}}}",
                columns=("video", "question", "candidates", "answer"),
            )
        )
    return {t.name: t for t in specs}


LOCAL_TASKS: dict[str, LocalTask] = _tasks()

# Groups of local tasks (tasks/groups/*.yaml), expanded by check_local_data.
LOCAL_GROUPS: dict[str, tuple[str, ...]] = {
    "vistog_image_local": (
        "gqa_local",
        "mmbench_en_dev_static_local",
        "mme_local",
        "pope_local",
        "scienceqa_img_local",
        "vqav2_val_local",
        "textvqa_val_local",
    ),
    "vistog_caption_local": ("coco2017_cap_val_local", "nocaps_val_local", "flickr30k_test_local"),
    "vistog_video_local": ("videomme_local", "mvbench_local", "nextqa_mc_test_local"),
    "mvbench_local": tuple(f"mvbench_{sub}_local" for sub in MVBENCH_SUBTASKS),
}


def expand_local_tasks(names) -> list[str]:
    """The local tasks behind `names` (groups expanded, other names dropped), in order, without repeats."""
    out: list[str] = []
    for name in names:
        for sub in LOCAL_GROUPS.get(name, (name,)):
            for task in expand_local_tasks([sub]) if sub in LOCAL_GROUPS else [sub]:
                if task in LOCAL_TASKS and task not in out:
                    out.append(task)
    return out


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The mirror root: `data_dir` if given, else $VISTOG_DATA_DIR, else None."""
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def repo_dir(task: LocalTask, root: Path) -> Path:
    """The folder of the task's hub repo under the mirror; an alias folder (e.g. lmms-lab-encoder/GQA) also counts."""
    for name in (task.repo, *task.aliases):
        if (root / name).is_dir():
            return root / name
    return root / task.repo


def _glob_first(folder: Path, patterns) -> list[str]:
    for pattern in patterns:
        found = sorted(glob.glob(str(folder / pattern)))
        if found:
            return found
    return []


def _needs(task: LocalTask, root: Path, patterns, what: str) -> str:
    where = repo_dir(task, root) / patterns[0]
    return f"{task.name} needs {where}; copy {task.repo}'s {what} there, see {DOC}"


def _no_data_dir(task_name: str) -> str:
    return (
        f"{task_name} reads a local mirror, but no data dir is set: pass --data-dir DIR or set {DATA_DIR_ENV}, "
        f"see {DOC}"
    )


def data_files(task_name: str, data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """`{split: [files]}` for `datasets.load_dataset("parquet" | "json", data_files=...)`; raises MissingLocalData."""
    task = LOCAL_TASKS[task_name]
    root = resolve_data_dir(data_dir)
    if root is None:
        raise MissingLocalData(_no_data_dir(task_name))
    files = _glob_first(repo_dir(task, root), task.patterns)
    if not files:
        raise MissingLocalData(_needs(task, root, task.patterns, task.what))
    return {task.split: files}


def media_path(task_name: str, value, root: Path | None = None) -> Path:
    """The video file (or frame folder) a row of a video task points at, under the mirror."""
    task = LOCAL_TASKS[task_name]
    root = root if root is not None else resolve_data_dir()
    if root is None:
        raise MissingLocalData(_no_data_dir(task_name))
    base = repo_dir(task, root)
    template = task.media.split(":", 1)[1]
    if template.startswith("{mvbench:"):
        return _mvbench_video(base, template[len("{mvbench:") : -1], str(value))
    return base / template.format(value)


def _mvbench_video(base: Path, sub_task: str, video: str) -> Path:
    # The extracted MVBench repo, laid out like lmms-eval's $HF_HOME/mvbench_video (same fallback for data0613).
    from lmms_eval.tasks.mvbench.utils import DATA_LIST

    folder = DATA_LIST[sub_task]
    path = base / folder / video
    if not path.exists() and os.path.basename(folder) in ("clevrer", "star"):
        alt = base / "data0613" / folder / video
        if alt.exists():
            return alt
    return path


def video_file(task_name: str, value) -> str:
    """doc_to_visual for the video tasks: the path, with the upper-case / mkv spellings lmms-eval also accepts."""
    path = media_path(task_name, value)
    if path.suffix == ".mp4":
        for candidate in (path, path.with_suffix(".MP4"), path.with_suffix(".mkv")):
            if candidate.exists():
                return str(candidate)
    elif path.exists():
        return str(path)
    raise FileNotFoundError(f"{task_name}: video {path} is missing from the local mirror, see {DOC}")


def _media_column(task: LocalTask) -> str:
    return task.media.split(":", 1)[0]


def _missing_media(task: LocalTask, root: Path, files: list[str]) -> list[str]:
    import pandas as pd

    column = _media_column(task)
    if files[0].endswith(".json"):
        values = pd.read_json(files[0])[column].tolist()
    else:
        values = [v for f in files for v in pd.read_parquet(f, columns=[column])[column].tolist()]
    missing = []
    for value in dict.fromkeys(values):
        path = media_path(task.name, value, root)
        spellings = (path, path.with_suffix(".MP4"), path.with_suffix(".mkv")) if path.suffix == ".mp4" else (path,)
        if not any(p.exists() for p in spellings):
            missing.append(path)
    messages = [f"{task.name} needs {p}; copy the video from {task.repo} there, see {DOC}" for p in missing]
    if len(messages) > MAX_MEDIA_MESSAGES:
        rest = len(messages) - MAX_MEDIA_MESSAGES
        more = f"{task.name} misses {rest} more videos under {repo_dir(task, root)}"
        messages = messages[:MAX_MEDIA_MESSAGES] + [more]
    return messages


def _table_problems(task: LocalTask, files: list[str], columns: tuple[str, ...], what: str) -> list[str]:
    """Rows and columns of the mirror's table files, from their metadata only (parquet footer; MVBench's json rows):
    one message per unreadable file or file without a column the task reads, one if the table has no rows."""
    import json

    import pyarrow.parquet as pq

    problems, rows = [], 0
    for file in files:
        try:
            if file.endswith(".json"):
                data = json.loads(Path(file).read_text(encoding="utf-8"))
                if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
                    raise ValueError("not a list of rows")
                names = set().union(*data) if data else set(columns)
                missing = [c for c in columns if any(c not in row for row in data)]
                rows += len(data)
            else:
                meta = pq.read_metadata(file)
                names = set(meta.schema.to_arrow_schema().names)
                missing = [c for c in columns if c not in names]
                rows += meta.num_rows
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError, json.JSONDecodeError too
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            kind = "json" if file.endswith(".json") else "parquet"
            problems.append(
                f"{task.name}: {file} is not a readable {kind} file ({reason}); "
                f"copy {task.repo}'s {what} there again, see {DOC}"
            )
            continue
        if missing:
            lacks = ", ".join(repr(c) for c in missing)
            has = ", ".join(sorted(names)) or "none"
            noun = "columns" if len(missing) > 1 else "column"
            problems.append(
                f"{task.name}: {file} has no {noun} {lacks} (its columns: {has}); the task reads "
                f"{', '.join(columns)}, as {task.repo}'s {what} has them, see {DOC}"
            )
    if not problems and rows == 0:
        where = files[0] if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more files)"
        problems.append(f"{task.name}: {where} has no rows; copy {task.repo}'s {what} there again, see {DOC}")
    return problems


def check_local_data(task_names, data_dir: str | os.PathLike | None = None) -> list[str]:
    """One message per file the named local tasks (or groups) need and the mirror lacks; [] when all is there.

    Names that are not local tasks are ignored, so the runner can pass its whole task list. Each table file found is
    read for its schema and row count only (no data): an empty table or one without a column the task reads is one
    message naming the file and the column. Video tasks also check every video their rows reference (at most
    MAX_MEDIA_MESSAGES lines per task, then a count).
    """
    tasks = expand_local_tasks(task_names)
    if not tasks:
        return []
    root = resolve_data_dir(data_dir)
    if root is None:
        return [_no_data_dir(name) for name in tasks]
    messages = []
    for name in tasks:
        task = LOCAL_TASKS[name]
        files = _glob_first(repo_dir(task, root), task.patterns)
        table = _table_problems(task, files, task.columns, task.what) if files else []
        if not files:
            messages.append(_needs(task, root, task.patterns, task.what))
        messages.extend(table)
        if task.images:
            images = _glob_first(repo_dir(task, root), task.images)
            if not images:
                messages.append(_needs(task, root, task.images, GQA_IMAGES))
            else:
                messages.extend(_table_problems(task, images, task.image_columns, GQA_IMAGES))
        if files and not table and task.media:
            messages.extend(_missing_media(task, root, files))
    return messages


# GQA keeps its images in a separate table joined on imageId; the built-in task copies every image into every
# question row (12,578 rows for 398 images). Here the rows keep imageId and doc_to_visual looks the image up.
@lru_cache(maxsize=2)
def _gqa_image_bytes(files: tuple[str, ...]) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    table = pq.read_table(list(files), columns=["id", "image"])
    ids = table.column("id").to_pylist()
    images = table.column("image").to_pylist()
    return {i: (img["bytes"] if isinstance(img, dict) else img) for i, img in zip(ids, images, strict=True)}


def gqa_image(image_id: str, data_dir: str | os.PathLike | None = None):
    """The RGB PIL image of a GQA imageId from the mirror's testdev_balanced_images table."""
    from PIL import Image

    task = LOCAL_TASKS["gqa_local"]
    root = resolve_data_dir(data_dir)
    if root is None:
        raise MissingLocalData(_no_data_dir(task.name))
    files = _glob_first(repo_dir(task, root), task.images)
    if not files:
        raise MissingLocalData(_needs(task, root, task.images, GQA_IMAGES))
    table = _gqa_image_bytes(tuple(files))
    if image_id not in table:
        raise KeyError(f"gqa_local: imageId {image_id!r} is not in {files[0]}")
    return Image.open(io.BytesIO(table[image_id])).convert("RGB")


__all__ = [
    "DATA_DIR_ENV",
    "LOCAL_GROUPS",
    "LOCAL_TASKS",
    "MissingLocalData",
    "check_local_data",
    "data_files",
    "expand_local_tasks",
    "gqa_image",
    "resolve_data_dir",
    "video_file",
]
