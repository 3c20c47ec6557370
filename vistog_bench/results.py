"""The on-disk schema of a run: `results/<run_id>/` with manifest, metrics, per-sample logs and profile records.

One run = one folder. Files are written atomically (write to a temporary file, then `os.replace`), so a killed run
never leaves a half-written JSON; `profile.jsonl` and sample logs are appended line by line and a torn last line is
ignored on read. Nothing already finished is rewritten with different content: `metrics.json` only grows, and a
cell that is recorded again (a resumed run redoing a failed cell) replaces its own record and no other.

    manifest.json    RunManifest: run id, command line, config, git sha, versions, device, seed, start/end
    metrics.json     list of CellResult: one per (task, method, budget) with lmms-eval's metric values + stderr
    profile.jsonl    ProfileRecord lines: one per served request or per controlled measurement
    samples/<task>__<method>__<budget>.jsonl   lmms-eval's per-sample logs for that cell

Units are in the names: `_ms`, `_bytes`, `_flops`, `_j`. FLOPs count 2 per multiply-add.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import UsageError

MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
PROFILE_FILE = "profile.jsonl"
SAMPLES_DIR = "samples"

STATUS_OK = "ok"
STATUS_OOM = "oom"
FAILED_PREFIX = "failed: "

# Stages a request goes through, in order. `decode` is all generated tokens after the first.
STAGES = ("preprocess", "vision", "grouping", "projector", "prefill", "decode")


def failed_status(reason: str) -> str:
    """`failed: <reason>` on one line."""
    return FAILED_PREFIX + " ".join(str(reason).split())


@dataclass(frozen=True)
class CellKey:
    """One cell of a sweep."""

    task: str
    method: str
    budget: int

    def slug(self) -> str:
        return f"{self.task}__{self.method}__{self.budget}"


@dataclass(frozen=True)
class CellResult:
    """lmms-eval's results for one (task, method, budget): metric name -> value, and its stderr where given."""

    task: str
    method: str
    budget: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    n_samples: int = 0
    elapsed_s: float | None = None

    @property
    def key(self) -> CellKey:
        return CellKey(self.task, self.method, self.budget)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


@dataclass(frozen=True)
class RunManifest:
    run_id: str
    command: list[str]
    config: dict[str, Any]
    git_sha: str | None
    versions: dict[str, str]
    device: dict[str, Any]
    seed: int
    started_at: str
    finished_at: str | None = None


@dataclass(frozen=True)
class ProfileRecord:
    """One served request (`kind="request"`) or one controlled measurement (`kind="controlled"`).

    Stage times are milliseconds; `ttft_ms` is the time to first token (request start -> the first token's
    logits: preprocess, vision, grouping, projector, prefill). Token counts are request totals, summed over the
    prompts of a batch. `kind="analytic"` records (from `vistog-bench profile --analytic`, `path="analytic"`) carry
    FLOPs and bytes and no times. For controlled measurements they are medians over repeats and `stats` holds
    `{stage: {"median", "p10", "p90", "cv", "n"}}`. `path` says which execution path produced the numbers
    (`eager` or `compiled`). FLOPs: `flops` holds analytic values per stage, `counted_flops` what
    `torch.utils.flop_counter.FlopCounterMode` counted. `null_reasons` says why a field is None
    (e.g. `{"energy_j": "NVML not available: no NVIDIA driver"}`).
    """

    kind: str
    method: str
    budget: int
    batch_size: int
    device: str
    dtype: str
    path: str = "eager"
    task: str | None = None
    visual_tokens: int | None = None
    text_tokens: int | None = None
    output_tokens: int | None = None
    preprocess_ms: float | None = None
    vision_ms: float | None = None
    grouping_ms: float | None = None
    projector_ms: float | None = None
    prefill_ms: float | None = None
    ttft_ms: float | None = None
    decode_ms: float | None = None
    decode_per_token_ms: float | None = None
    total_ms: float | None = None
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    counted_flops: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    kv_cache_bytes: int | None = None
    weight_bytes: int | None = None
    energy_j: float | None = None
    peak_rss_bytes: int | None = None
    null_reasons: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON line per record (a whole file at once, e.g. one cell's sample log)."""
    _atomic_write_text(Path(path), "".join(json.dumps(record, default=str) + "\n" for record in records))


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record; each line is flushed and synced before the next call returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path, what: str = "result file") -> Any:
    """Parsed JSON; a missing or malformed file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"missing {what}: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"malformed {what} {path}: {exc}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines; a torn last line (a run killed mid-write) is dropped, a malformed middle line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise UsageError(f"malformed result file {path} line {number}: {exc}") from None
    return records


def _from_dict(cls, data: dict[str, Any], source: Path):
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not isinstance(data, dict) or not required <= data.keys():
        missing = sorted(required - set(data)) if isinstance(data, dict) else sorted(required)
        raise UsageError(f"malformed result file {source}: a {cls.__name__} record lacks {', '.join(missing)}")
    return cls(**{k: v for k, v in data.items() if k in names})


class RunDir:
    """Read and write one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- writing -------------------------------------------------------------------------------------------------
    def write_manifest(self, manifest: RunManifest) -> None:
        write_json(self.path / MANIFEST_FILE, dataclasses.asdict(manifest))

    def record_cell(self, result: CellResult) -> None:
        """Add or replace the record of one cell; every other cell's record is kept as it is."""
        cells = [c for c in self.cells() if c.key != result.key]
        cells.append(result)
        write_json(self.path / METRICS_FILE, [dataclasses.asdict(c) for c in cells])

    def append_profile(self, records: Iterable[ProfileRecord]) -> None:
        append_jsonl(self.path / PROFILE_FILE, (dataclasses.asdict(r) for r in records))

    def samples_path(self, key: CellKey) -> Path:
        return self.path / SAMPLES_DIR / f"{key.slug()}.jsonl"

    # -- reading -------------------------------------------------------------------------------------------------
    def manifest(self) -> RunManifest:
        return _from_dict(RunManifest, read_json(self.path / MANIFEST_FILE), self.path / MANIFEST_FILE)

    def cells(self) -> list[CellResult]:
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        data = read_json(path)
        if not isinstance(data, list):
            raise UsageError(f"malformed result file {path}: expected a list of cell records")
        return [_from_dict(CellResult, item, path) for item in data]

    def profile(self) -> list[ProfileRecord]:
        path = self.path / PROFILE_FILE
        return [_from_dict(ProfileRecord, item, path) for item in read_jsonl(path)]


def load_run(path: str | os.PathLike) -> RunDir:
    """Open an existing run folder, checking that it is one (a manifest is present and readable)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UsageError(f"not a run folder: {run.path}")
    run.manifest()
    return run
