"""The records of a run folder: what each file holds (dataclasses, checked by pydantic when read) and the files' names.

    manifest.json    RunManifest: run id, command line, config, git sha, versions, device, seed, start/end
    metrics.json     list of CellResult: one per (task, method, budget) with lmms-eval's metric values + stderr
    profile.jsonl    ProfileRecord lines: one per served request or per controlled measurement
    samples/<task>__<method>__<budget>.jsonl   lmms-eval's per-sample logs for that cell (`store.safe_file_stem`: a
                     task name with characters outside [A-Za-z0-9._-] or a leading dot, `../x` or `a/b`, is spelt with
                     `_` and a hash of the name, so every file stays in the run folder and every cell keeps its own)
    cells/<method>__<budget>__<cell_id>/   one cell of the sweep's plan (a checkpoint, method and budget with its
                     tasks): result.json (its CellResult records, written atomically by the one process that ran it),
                     profile.jsonl (its profile lines), .lock (held while a worker runs it); metrics.json and
                     profile.jsonl are merged from these (`store.RunDir.merge`); <task>/submissions/ what lmms-eval
                     writes for the cell's task (submission files)
    launch.json      the plan and each cell's launch: launcher, worker, pid / job id, log, state (run/plan.py)

Units are in the names: `_ms`, `_bytes`, `_flops`, `_j`. FLOPs count 2 per multiply-add. Reading and writing the
files (atomic writes, torn lines, locks): `store.py`.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AllowInfNan,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from ..errors import UsageError

MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
PROFILE_FILE = "profile.jsonl"
SAMPLES_DIR = "samples"
CELLS_DIR = "cells"
LOCK_FILE = ".lock"
MERGE_LOCK_FILE = ".merge.lock"
CELL_RESULT_FILE = "result.json"
LAUNCH_FILE = "launch.json"

STATUS_OK = "ok"
STATUS_OOM = "oom"
FAILED_PREFIX = "failed: "

# Stages a request goes through, in order. `decode` is all generated tokens after the first.
STAGES = ("preprocess", "vision", "grouping", "projector", "prefill", "decode")


def failed_status(reason: str) -> str:
    """`failed: <reason>` on one line."""
    return FAILED_PREFIX + " ".join(str(reason).split())


# Field types the readers check (pydantic validates each record against its dataclass; writers are not slowed).
Number = Annotated[StrictFloat, AllowInfNan(False)]  # a finite number (an int is accepted as one)
Count = StrictInt | Number  # tokens and bytes: integers as written; a float from another writer is accepted


@dataclass(frozen=True)
class CellKey:
    """One cell of a sweep."""

    task: str
    method: str
    budget: int

    def slug(self) -> str:
        """`task__method__budget`, for messages and names; files use `safe_file_stem` of it."""
        return f"{self.task}__{self.method}__{self.budget}"


@dataclass(frozen=True)
class CellResult:
    """lmms-eval's results for one (task, method, budget): metric name -> value, and its stderr where given."""

    task: StrictStr
    method: StrictStr
    budget: StrictInt
    status: StrictStr
    metrics: dict[str, Any] = field(default_factory=dict)  # lmms-eval's values: numbers, NaN, "N/A", None
    stderr: dict[str, Any] = field(default_factory=dict)
    n_samples: Annotated[StrictInt, Field(ge=0)] = 0  # samples scored
    elapsed_s: Number | None = None
    # samples that failed alone (an undecodable image) and were left out of the metrics
    n_failed: Annotated[StrictInt, Field(ge=0)] = 0
    # How `budget` reads on LLaVA-NeXT / OneVision / Qwen2.5-VL (model.families: "per_image_total", "percent_of_own";
    # VisToG on those families: "per_view", N tokens per view). None: LLaVA-1.5, every image gives exactly `budget`.
    budget_rule: StrictStr | None = None
    # Per image, over the scored samples whose log has them (families): tokens the LLM received, and the processor's
    # unreduced count.
    mean_visual_tokens: Number | None = None
    mean_visual_tokens_unreduced: Number | None = None
    # What the cell's method ran (reducers.AppliedMethod, LLaVA-1.5): how `budget` counts ("llm_input",
    # "after_layer", "layer_mean"), visual tokens per image entering decoder layer 0 and their mean over the layers;
    # and every attention kernel it ran with what it computed beside them (adapter.attention_record): timings are
    # comparable only between cells whose `attention` is the same.
    budget_convention: StrictStr | None = None
    llm_input_tokens: StrictInt | None = None
    mean_layer_tokens: Number | None = None
    attention: StrictStr | None = None
    # Which plan cell recorded it (run/plan.py: a hash of what defines the cell), the machine it ran on (device kind,
    # GPU model and driver or none, CPU model, torch threads: timings compare only under one record), and who ran it
    # (launcher: inprocess, local, slurm; worker: a name, a GPU index or a job id).
    cell_id: StrictStr | None = None
    hardware: dict[str, Any] | None = None
    launcher: StrictStr | None = None
    worker: StrictStr | None = None

    @property
    def key(self) -> CellKey:
        return CellKey(self.task, self.method, self.budget)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


@dataclass(frozen=True)
class RunManifest:
    run_id: StrictStr
    command: list[StrictStr]
    config: dict[str, Any]
    git_sha: StrictStr | None
    versions: dict[str, Any]
    device: dict[str, Any]
    seed: StrictInt
    started_at: StrictStr
    finished_at: StrictStr | None = None
    prompt_templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # checkpoint -> {source, style}


@dataclass(frozen=True)
class ProfileRecord:
    """One served request (`kind="request"`) or one controlled measurement (`kind="controlled"`).

    Stage times are milliseconds; `ttft_ms` is the time to first token (request start -> the first token's
    logits: preprocess, vision, grouping, projector, prefill). Token counts are request totals, summed over the
    prompts of a batch. `kind="analytic"` records (from `vistog-bench profile --analytic`,
    `execution_path="analytic"`) carry FLOPs and bytes and no times. For controlled measurements they are medians over
    repeats and `stats` holds `{stage: {"median", "p10", "p90", "cv", "n"}}`. `execution_path` says which execution
    path produced the numbers (`eager` or `compiled`); files and callers that still say `path` are read as before
    (`path=` to the constructor, `record.path`, a `"path"` key). FLOPs: `flops` holds analytic values per stage,
    `counted_flops` what `torch.utils.flop_counter.FlopCounterMode` counted. `null_reasons` says why a field is None
    (e.g. `{"energy_j": "NVML not available: no NVIDIA driver"}`).
    """

    kind: StrictStr
    method: StrictStr
    budget: StrictInt
    batch_size: Annotated[StrictInt, Field(ge=1)]
    device: StrictStr
    dtype: StrictStr
    execution_path: StrictStr = "eager"
    task: StrictStr | None = None
    visual_tokens: Count | None = None
    text_tokens: Count | None = None
    output_tokens: Count | None = None
    preprocess_ms: Number | None = None
    vision_ms: Number | None = None
    grouping_ms: Number | None = None
    projector_ms: Number | None = None
    prefill_ms: Number | None = None
    ttft_ms: Number | None = None
    decode_ms: Number | None = None
    decode_per_token_ms: Number | None = None
    total_ms: Number | None = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    flops: dict[str, Number] = field(default_factory=dict)
    counted_flops: dict[str, Number] = field(default_factory=dict)
    peak_memory_bytes: dict[str, Count] = field(default_factory=dict)
    kv_cache_bytes: Count | None = None
    weight_bytes: Count | None = None
    energy_j: Number | None = None
    peak_rss_bytes: Count | None = None
    null_reasons: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: InitVar[str | None] = None  # the old name of execution_path, accepted from writers and files

    def __post_init__(self, path: str | None) -> None:
        if path is not None:
            object.__setattr__(self, "execution_path", path)


ProfileRecord.path = property(lambda self: self.execution_path, doc="The old name of `execution_path`.")


_ADAPTERS = {cls: TypeAdapter(cls) for cls in (CellResult, RunManifest, ProfileRecord)}


def validation_message(exc: ValidationError) -> str:
    """A pydantic error on one line: the first problem, where it is, and how many more there are."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"


def record_from_dict(cls, data: Any, source: Path, index: int | None = None):
    """A record of `cls` checked against its field types; unknown keys are ignored (newer writers may add some)."""
    try:
        return _ADAPTERS[cls].validate_python(data)
    except ValidationError as exc:
        which = f"{cls.__name__} record" + ("" if index is None else f" {index}")
        raise UsageError(f"malformed result file {source}: {which}: {validation_message(exc)}") from None
