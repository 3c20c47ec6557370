"""Task names: lmms-eval's built-ins, ours in the top-level `tasks/` (shipped as `vistog_bench.tasks`, always on the
include path), users' folders; and the groups and limits of a sweep.

`vistog-bench tasks [--include-path DIR ...] [--filter TEXT]` lists them; `vistog-bench tasks --path` prints the folder
of ours, for lmms-eval's own CLI (`--include_path "$(vistog-bench tasks --path)"`).

Our task YAMLs (and the utils.py / mirror.py their `!function` tags name) ship inside the package, so a wheel install
finds them where an editable one does: `importlib.resources` gives the folder, lmms-eval reads it as files.
`check_tasks_available` is the runner's one pre-flight call: names known, and every task's data on this machine
before any model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib.resources
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..results import STATUS_OK, CellResult, failed_status

# A real folder in both an editable and a wheel install (lmms-eval walks it with os.walk and opens files by path).
PROJECT_TASKS = Path(str(importlib.resources.files("vistog_bench.tasks")))


def include_paths(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Our `tasks/` first, then the user's folders (which must exist)."""
    for path in extra:
        if not Path(path).is_dir():
            raise UsageError(f"--include-path {path} is not a folder")
    return [str(PROJECT_TASKS), *[str(Path(p).resolve()) for p in extra]]


def quiet_lmms_eval() -> None:
    """lmms-eval logs every task YAML it indexes; keep warnings and errors only (called at run time, never at
    import)."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("VISTOG_LMMS_LOG_LEVEL", "WARNING"))
    logging.getLogger("lmms-eval").setLevel(logging.WARNING)


def task_manager(extra_include: list[str] | tuple[str, ...] = ()):
    """lmms-eval's TaskManager over its built-ins, ours and `extra_include`. It reads every task YAML there to index
    it: a YAML syntax error is one UsageError naming the file and line (`yaml_error_line`)."""
    import yaml
    from lmms_eval.tasks import TaskManager

    quiet_lmms_eval()
    paths = include_paths(extra_include)
    try:
        return TaskManager(verbosity="WARNING", include_path=paths)
    except yaml.YAMLError as exc:
        raise UsageError(f"task YAML {yaml_error_line(exc)}") from None


def yaml_error_line(exc) -> str:
    """A PyYAML error as `FILE line L, column C: problem (context)`, one line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{mark.name} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(unknown file)"
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{where}: {problem}" + (f" ({context})" if context else "")
    return " ".join(text.split())


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
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        help="extra lmms-eval task folder (its tasks' !function tags run its Python: trusted folders only)",
    )
    parser.add_argument("--filter", default="", help="show names containing this text")
    parser.add_argument(
        "--path",
        action="store_true",
        help="print the folder of vistog-bench's task YAMLs (for lmms-eval's --include_path) and exit",
    )


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
        origin = (
            "vistog-bench"
            if path and ours in path.resolve().parents
            else ("lmms-eval" if path and "lmms_eval" in str(path) else "user")
        )
        rows.append(f"{name:45s} {entry['type']:7s} {origin}")
    print("\n".join(rows) if rows else "no task matches")
    return 0


# -- pre-flight: is every task's data on this machine? ----------------------------------------------------------------
# lmms-eval 0.7.3 builds a task's dataset only after the model is loaded, and a missing one surfaces as tenacity's
# RetryError around datasets' ConnectionError. These checks read the same YAML fields lmms-eval's
# ConfigurableTask.download reads (dataset_path, dataset_name, dataset_kwargs) and probe what it would load, offline.

# dataset_kwargs that ConfigurableTask.download consumes itself (the rest go to datasets.load_dataset)
_LMMS_EVAL_KWARGS = (
    "video",
    "cache_dir",
    "force_download",
    "force_unzip",
    "local_files_only",
    "create_link",
    "builder_script",
    "From_YouTube",
    "load_from_disk",
    "max_retries",
    "num_proc",
    "token",
)
# Hub datasets a built-in task's utils load on their own (lmms-eval 0.7.3): gqa's process_docs joins the image table.
EXTRA_HUB_DATASETS = {"gqa": (("lmms-lab-encoder/GQA", "testdev_balanced_images"),)}
OFFLINE_DOC = "docs/offline-data.md"


def _simple_config(yaml_path: str) -> dict:
    """A task YAML with its `include:`s merged and `!function` tags left unresolved (nothing imported)."""
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(yaml_path, mode="simple")


def _hub_offline() -> bool:
    """What `datasets` in this process will do: with HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) set it never asks the hub
    and loads a hub dataset from its own cache only; online, a missing dataset is simply downloaded."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


@functools.cache
def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached from here (one HEAD request to its endpoint, 5 s at most), or None."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as exc:  # noqa: BLE001 - DNS failure, refused, timed out, proxy error: all mean "cannot reach"
        return f"the hub {constants.ENDPOINT} cannot be reached ({type(exc).__name__})"
    return None


def _why_cache_only() -> str | None:
    """Why a hub dataset can come only from the local cache here (offline mode, or no route to the hub), or None."""
    return "HF_HUB_OFFLINE is set" if _hub_offline() else _hub_unreachable()


@contextlib.contextmanager
def _cache_lookups_only():
    """datasets and huggingface_hub in offline mode for the lookups inside (restored after): with the hub unreachable
    they then answer from the cache at once instead of retrying the network, as datasets falls back to the cache."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _datasets_cache_problem(path: str, name, cache_dir, kwargs: dict) -> str | None:
    """Why `datasets.load_dataset(path, name, ...)` would fail offline, or None: load_dataset_builder with the same
    arguments runs the same lookup (datasets' cache module, `<cache>/<org>___<name>/<config>/...`) and reads no data.
    Only called in offline mode, where datasets never touches the network."""
    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # "Using the latest cached version ..." is lmms-eval's to print, later
    try:
        datasets.load_dataset_builder(path, name, cache_dir=cache_dir, **kwargs)
    except Exception as exc:  # ConnectionError (not cached), ValueError (config not cached), ...
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    finally:
        datasets.logging.set_verbosity(verbosity)
    return None


def _hub_snapshot_cached(repo_id: str, revision: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and kin: not in the hub cache
        return False
    return True


def _local_route(task: str, requested: str) -> str:
    """How to run the same benchmark from a local mirror, if we have a local twin of the task (or its group)."""
    from . import offline_data

    twins = [t for t in offline_data.LOCAL_TASKS.values() if t.builtin == task]
    if not twins:
        return "run once with the hub reachable so that the datasets cache holds it, or unset HF_HUB_OFFLINE"
    twin = twins[0]
    if requested != task and f"{requested}_local" in offline_data.LOCAL_GROUPS:
        return (
            f"use --tasks {requested}_local --data-dir DIR instead ({twin.name} reads DIR/{twin.repo}), "
            f"see {OFFLINE_DOC}"
        )
    return f"use --tasks {twin.name} --data-dir DIR instead, DIR holding a copy of {twin.repo}, see {OFFLINE_DOC}"


def _files_problem(task: str, builder: str, data_files, yaml_path: str | None) -> str | None:
    """A local-builder task (dataset_path: parquet/json/csv/...) whose data_files name a file that is not there, is
    empty or (parquet) does not read."""
    import glob

    values = list(data_files.values()) if isinstance(data_files, dict) else data_files
    values = values if isinstance(values, list) else [values]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    for value in flat:
        if not isinstance(value, str) or "://" in value:
            continue  # `!function` (our *_local tasks: checked by offline_data) or a URL
        candidates = [os.path.expanduser(value)]
        if yaml_path and not os.path.isabs(candidates[0]):
            candidates.insert(0, os.path.join(os.path.dirname(yaml_path), value))
        found = next((sorted(glob.glob(c)) for c in candidates if glob.glob(c)), [])
        if not found:
            return f"{task} reads {value}, which does not exist"
        for file in found:
            problem = data_file_problem(file, builder)
            if problem:
                return f"{task} reads {file}, which {problem}"
    return None


def data_file_problem(file: str, builder: str) -> str | None:
    """Why `datasets`' `builder` (parquet, json, csv, ...) could not read `file`, from what is cheap to see: an empty
    file, or a parquet file whose footer does not read (pyarrow's metadata only, no rows). None when it looks fine."""
    if os.path.isdir(file):
        return None  # a folder of files: datasets reads what is inside
    if os.path.getsize(file) == 0:
        return "is empty (0 bytes)"
    if builder != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(file)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"is not a readable parquet file ({reason})"
    return None


def _task_problems(task: str, config: dict, yaml_path: str | None, requested: str) -> list[str]:
    """Why the data of one YAML-configured, non-local task cannot be loaded here ([] when it can, or when the hub is
    reachable and datasets may download what its cache lacks)."""
    path = config.get("dataset_path")
    if not isinstance(path, str):
        return []
    kwargs = config.get("dataset_kwargs") if isinstance(config.get("dataset_kwargs"), dict) else {}
    if kwargs.get("load_from_disk"):
        found = os.path.exists(os.path.expanduser(path))
        return [] if found else [f"{task} loads the saved dataset {path}, which does not exist"]
    if path in ("csv", "json", "parquet", "text", "pandas", "arrow"):  # lmms_eval.utils._LOCAL_BUILDERS
        problem = _files_problem(task, path, kwargs.get("data_files"), yaml_path)
        return [problem] if problem else []
    if os.path.isdir(os.path.expanduser(path)):
        return []  # a local dataset folder
    cache_only = _why_cache_only()
    if cache_only is None:
        return []  # online: datasets downloads what its cache lacks
    with _cache_lookups_only():
        return _hub_task_problems(task, path, config, kwargs, requested, cache_only)


def _hub_task_problems(task: str, path: str, config: dict, kwargs: dict, requested: str, cache_only: str) -> list[str]:
    """The hub dataset (and videos) of a built-in task looked up in the local caches; `cache_only` says why only
    they count."""
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        return [f"{task} reads {path}, which is not a folder"]

    hub_home = os.path.expanduser(os.getenv("HF_HOME", "~/.cache/huggingface/"))
    load_kwargs = {k: v for k, v in kwargs.items() if k not in _LMMS_EVAL_KWARGS}
    if kwargs.get("video") and kwargs.get("cache_dir"):
        from lmms_eval.utils import resolve_cache_dir

        videos = resolve_cache_dir(str(kwargs["cache_dir"]), base_dir=hub_home)
        if not os.path.exists(videos) and not _hub_snapshot_cached(path, str(kwargs.get("revision", "main"))):
            return [
                f"{task} needs its videos in {videos} (unpacked from the hub dataset {path}), which is not there "
                f"and {cache_only}; {_local_route(task, requested)}"
            ]
    from lmms_eval.api.task import _resolve_hf_datasets_cache_dir  # where ConfigurableTask.download points datasets

    # a video task's cache_dir is its video folder (consumed above); otherwise it overrides the datasets cache
    cache_dir = (None if kwargs.get("video") else kwargs.get("cache_dir")) or _resolve_hf_datasets_cache_dir()
    needed = [(path, config.get("dataset_name"), cache_dir, load_kwargs)]
    needed += [(repo, name, None, {}) for repo, name in EXTRA_HUB_DATASETS.get(task, ())]
    for repo, name, where, extra in needed:
        if _datasets_cache_problem(repo, name, where, extra) is not None:
            config_text = f" (config {name})" if name else ""
            where = where or datasets_default_cache()
            return [
                f"{task} needs the hub dataset {repo}{config_text}, which is not in the datasets cache {where} "
                f"and {cache_only}; {_local_route(task, requested)}"
            ]  # one line per task is enough
    return []


def datasets_default_cache() -> str:
    """Where `datasets.load_dataset` without cache_dir looks (gqa's utils load their image table that way)."""
    import datasets

    return str(datasets.config.HF_DATASETS_CACHE)


def check_tasks_available(manager, tasks, data_dir: str | os.PathLike | None = None) -> None:
    """The runner's pre-flight, before any model loads: every name is known, and every task behind it (groups and
    tags expanded) can get its data on this machine. Raises one UsageError (the first problem, then a count).

    - our `*_local` tasks: their mirror files under `data_dir` (or $VISTOG_DATA_DIR), readable, non-empty, with the
      columns the task reads (vistog_bench.run.offline_data.check_local_data);
    - lmms-eval's built-in (hub) tasks, when HF_HUB_OFFLINE is set or the hub cannot be reached: their dataset (and
      config) in the datasets cache lmms-eval loads from, video folders in $HF_HOME or the hub cache; the message
      names the hub dataset and the local route (`gqa_local --data-dir DIR`, docs/offline-data.md);
    - tasks reading local files (`dataset_path: parquet` + `data_files`, `load_from_disk`): the files exist.
    Class-defined tasks (our shapes tasks) fetch their own data and pass.
    """
    from . import offline_data

    names = list(tasks)
    check_task_names(manager, names)  # every unknown name in one message
    messages: list[str] = []
    local: list[str] = []
    for requested in names:
        for task in expand_tasks(manager, [requested])[0]:
            entry = manager.task_index[task]
            if task in offline_data.LOCAL_TASKS:
                local.append(task)
            elif entry["type"] == "task":  # a class-defined task (python_task) fetches its own data
                yaml_path = entry["yaml_path"]
                found = _task_problems(task, _simple_config(yaml_path), yaml_path, requested)
                messages.extend(m for m in found if m not in messages)
    messages = offline_data.check_local_data(list(dict.fromkeys(local)), data_dir) + messages
    if messages:
        raise UsageError(messages[0] + (f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""))


# -- the walk of the task index; groups and limits of a sweep ----------------------------------------------------------
# A group (`vistog_image_local`, `shapes`, nested ones such as `mvbench_local`) is expanded into its member tasks, each
# its own cell; a group whose YAML defines `aggregate_metric_list` also gets a cell of its own, aggregated from its
# members' cells as lmms-eval aggregates groups (size-weighted mean, pooled stderr). MME scores each image's two
# questions as a pair, so an odd `--limit` is rounded up to even for MME tasks.


@dataclass(frozen=True)
class TaskGroup:
    """A group named on the command line (or nested in one): the leaf tasks under it, and lmms-eval's
    `aggregate_metric_list` entries (AggMetricConfig) when the group has a score of its own."""

    name: str
    members: tuple[str, ...]
    aggregate: tuple = ()


def expand_tasks(manager, names) -> tuple[list[str], list[TaskGroup]]:
    """The leaf tasks behind `names` (groups and tags replaced by their members, in order, each once) and the groups
    met on the way: the one walk of lmms-eval's task index, for the sweep's cells and the pre-flight's data checks.

    It reads the index as lmms-eval's TaskManager builds it (`task_index`: `type` task / python_task / group / tag,
    `yaml_path`, a tag's `task` list) and a group's YAML as `load_task_or_group` does (`load_yaml_config`, full mode).
    Refused in one UsageError: an unknown name (with its nearest known ones), a group member that is not a known task,
    a group that contains itself, a group with no task in it, an inline task config among a group's members."""
    check_task_names(manager, list(names))
    leaves: list[str] = []
    groups: list[TaskGroup] = []
    for name in names:
        found = _leaf_tasks(manager, name, groups, ())
        if not found:  # a group or tag with no task under it: nothing would run for it, and nothing would say so
            raise UsageError(f"--tasks {name}: a group with no task in it (its YAML lists none); nothing to run")
        for leaf in found:
            if leaf not in leaves:
                leaves.append(leaf)
    return leaves, groups


def _leaf_tasks(manager, name: str, groups: list[TaskGroup], parents: tuple[str, ...]) -> list[str]:
    from lmms_eval.api.group import GroupConfig
    from lmms_eval.utils import load_yaml_config

    entry = manager.task_index.get(name)
    if entry is None:
        raise UsageError(f"group {parents[-1]}: member {name!r} is not a known task")
    if entry["type"] in ("task", "python_task"):
        return [name]
    if name in parents:
        raise UsageError(f"group {name} contains itself ({' > '.join(parents + (name,))})")
    # a group's own YAML (a tag, or a group indexed from task configs, has yaml_path -1 and lists its tasks itself)
    has_yaml = entry["type"] == "group" and entry["yaml_path"] != -1
    config = load_yaml_config(entry["yaml_path"], mode="full") if has_yaml else {}
    listed = config.get("task", entry.get("task"))
    listed = [listed] if isinstance(listed, str) else list(listed or [])
    leaves: list[str] = []
    for member in listed:
        if not isinstance(member, str):
            raise UsageError(f"group {name}: an inline task config among its members is not supported; name the task")
        leaves += [t for t in _leaf_tasks(manager, member, groups, parents + (name,)) if t not in leaves]
    if entry["type"] == "group" and all(g.name != name for g in groups):
        fields = {f.name for f in dataclasses.fields(GroupConfig)}
        group_config = GroupConfig(**{k: v for k, v in config.items() if k in fields})
        groups.append(TaskGroup(name, tuple(leaves), tuple(group_config.aggregate_metric_list or ())))
    return leaves


def is_mme(manager, task: str) -> bool:
    """MME-style scoring (lmms-eval's `mme_process_results`), which asserts that each image's questions are paired."""
    from lmms_eval import utils as lmms_utils

    path = manager.task_index.get(task, {}).get("yaml_path")
    if not isinstance(path, str):
        return False
    process = lmms_utils.load_yaml_config(path, mode="simple").get("process_results")
    return "mme_process_results" in str(getattr(process, "value", process))


def task_limits(manager, tasks: list[str], limit: int | None) -> dict[str, int | None]:
    """`--limit` per task; for MME an odd limit becomes the next even one (whole question pairs), said in one line."""
    limits = {}
    for task in tasks:
        limits[task] = limit
        if limit is not None and limit % 2 and is_mme(manager, task):
            limits[task] = limit + 1
            print(
                f"vistog-bench run: {task}: --limit {limit} rounded up to {limit + 1} (MME scores each image's "
                "two questions as a pair)",
                file=sys.stderr,
            )
    return limits


def group_cell(group: TaskGroup, method: str, budget: int, members: dict[str, CellResult]) -> CellResult:
    """A group's own cell from its members' cells, as lmms-eval's `consolidate_group_results` aggregates: per metric
    named in `aggregate_metric_list`, the (size-weighted) mean over the members that have it, and the pooled stderr."""
    from lmms_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    not_ok = [t for t in group.members if t not in members or not members[t].ok]
    n_failed = sum(members[t].n_failed for t in group.members if t in members)
    if not_ok:
        reason = f"member task(s) not ok: {', '.join(not_ok)}"
        return CellResult(group.name, method, budget, failed_status(reason), n_failed=n_failed)
    cells = [members[t] for t in group.members]
    metrics, stderr = {}, {}
    for metric in sorted({k for c in cells for k in c.metrics}):
        having = [c for c in cells if metric in c.metrics]
        values, sizes = [c.metrics[metric] for c in having], [c.n_samples for c in having]
        for spec in group.aggregate:
            if spec.metric not in metric or metric.partition(",")[2] not in spec.filter_list:
                continue
            aggregate = aggregate_subtask_metrics if spec.aggregation == "mean" else spec.aggregation
            metrics[metric] = float(aggregate(values, sizes, spec.weight_by_size))
            if all(metric in c.stderr for c in having) and sum(sizes) > len(sizes):
                stderr[metric] = float(pooled_sample_stderr([c.stderr[metric] for c in having], sizes))
    n_samples = sum(c.n_samples for c in cells)
    elapsed = round(sum(c.elapsed_s or 0.0 for c in cells), 3)
    status = STATUS_OK if metrics else failed_status("no member metric matches the group's aggregate_metric_list")
    return CellResult(group.name, method, budget, status, metrics, stderr, n_samples, elapsed, n_failed)
