"""Task groups and task limits of a sweep: a group (`vistog_image_local`, `shapes`, nested ones such as
`mvbench_local`) is expanded into its member tasks, each its own cell; a group whose YAML defines
`aggregate_metric_list` also gets a cell of its own, aggregated from its members' cells as lmms-eval aggregates
groups (size-weighted mean, pooled stderr). MME scores each image's two questions as a pair, so an odd `--limit` is
rounded up to even for MME tasks.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from .errors import UsageError
from .results import STATUS_OK, CellResult, failed_status


@dataclass(frozen=True)
class TaskGroup:
    """A group named on the command line (or nested in one): the leaf tasks under it, and lmms-eval's
    `aggregate_metric_list` entries (AggMetricConfig) when the group has a score of its own."""

    name: str
    members: tuple[str, ...]
    aggregate: tuple = ()


def expand_tasks(manager, names) -> tuple[list[str], list[TaskGroup]]:
    """The leaf tasks to evaluate (groups and tags replaced by their members, in order, each once) and the groups."""
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

    entry = manager.task_index.get(name)
    if entry is None:
        raise UsageError(f"group {parents[-1]}: member {name!r} is not a known task")
    if entry["type"] in ("task", "python_task"):
        return [name]
    if name in parents:
        raise UsageError(f"group {name} contains itself ({' > '.join(parents + (name,))})")
    config = manager._get_config(name) if entry["type"] == "group" and entry["yaml_path"] != -1 else {}
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


__all__ = ["TaskGroup", "expand_tasks", "task_limits", "group_cell", "is_mme"]
