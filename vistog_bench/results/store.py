"""A run folder on disk: `results/<run_id>/` written atomically, read back through the schema, resumed, locked.

One run = one folder. Files are written atomically (write to a temporary file, then `os.replace`), so a killed run
never leaves a half-written JSON; `profile.jsonl` is appended line by line. An append that fails (a full disk) is
cut back to where it started, so earlier lines stay whole; a kill can still tear the last line: readers skip a torn
last line with a warning (a malformed line before it is an error naming the file and line), and
`RunDir.prepare_resume()` cuts it off before a resumed run appends again. Nothing already finished is rewritten with
different content: `metrics.json` only grows, and a cell that is recorded again (a resumed run redoing a failed
cell) replaces its own record and no other. `RunDir.lock()` keeps two coordinators from writing one run at once.

Workers of one run (`run --cells`, run/local.py, SLURM jobs) write side by side: each plan cell has its own folder,
`cells/<method>__<budget>__<cell_id>/`, whose `result.json` and `profile.jsonl` only the worker holding that cell's
`.lock` writes; `RunDir.merge()` rebuilds `metrics.json` from them in plan order (the same bytes whatever order the
cells finished in) under `.merge.lock`, which every merging process waits for.

The records and file names: `schema.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import stat
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .schema import (
    CELL_RESULT_FILE,
    CELLS_DIR,
    LAUNCH_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    MERGE_LOCK_FILE,
    METRICS_FILE,
    PROFILE_FILE,
    SAMPLES_DIR,
    CellKey,
    CellResult,
    ProfileRecord,
    RunManifest,
    record_from_dict,
)

# Errors that mean "no more bytes fit": a full disk, a full quota, or the process's file-size limit (RLIMIT_FSIZE,
# `ulimit -f`). The CLI reports what was saved and exits DISK_FULL_EXIT.
DISK_FULL_REASONS = {
    errno.ENOSPC: "no space left on device",
    getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
}
DISK_FULL_ERRNOS = frozenset(DISK_FULL_REASONS)
DISK_FULL_EXIT = 3
SAFE_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_STEM = 160  # characters of a file stem made from a name (file systems allow 255 bytes; suffixes follow)


def new_run_id(prefix: str = "") -> str:
    """`<prefix>YYYYmmdd-HHMMSS-<6 hex>`: the time for people, a random suffix so two runs started in the same second
    never share a folder."""
    return prefix + dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def safe_file_stem(name: str) -> str:
    """A file name (without suffix) for a user-controlled `name` (a task name from an include-path YAML): the name
    itself when it is made of [A-Za-z0-9._-] only, does not start with a dot and is short; otherwise every other
    character becomes `_`, leading dots are dropped, and `-` and 10 hex digits of the name's SHA-256 follow, so two
    names never share a file (`a/b` and `a_b` differ) and no name leaves its folder (`../x`, `/etc/x`)."""
    if name and not name.startswith(".") and len(name) <= MAX_STEM and set(name) <= SAFE_NAME_CHARACTERS:
        return name
    spelt = "".join(ch if ch in SAFE_NAME_CHARACTERS else "_" for ch in name).lstrip(".")[:MAX_STEM]
    return f"{spelt}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:10]}"


def _disk_full(exc: OSError, path: Path) -> OSError:
    """The same error with the file it happened on named (a failed `write` carries no file name)."""
    if exc.errno in DISK_FULL_ERRNOS and not exc.filename:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    return exc


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Any]:
    """A binary handle on a temporary file beside `path` (`.<name>.<random>.tmp`): when the block ends the file is
    synced and renamed onto `path`; when it fails (a full disk, an error of the writer) the temporary file is removed
    and `path` is as it was. A full disk is raised naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        error = _disk_full(exc, path)
        if error is exc:
            raise
        raise error from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` all at once: a reader sees the old file or the whole new one, never a part."""
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    write_text_atomic(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON line per record (a whole file at once, e.g. one cell's sample log)."""
    write_text_atomic(Path(path), "".join(json.dumps(record, default=str) + "\n" for record in records))


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record, synced before returning. All or nothing: when the write fails (a full disk)
    the file is cut back to its size before the call, so no partial line is left behind. A torn last line left by
    an earlier kill is cut off first, so the new lines never glue onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(record, default=str) + "\n" for record in records).encode("utf-8")
    if not data:
        return
    if not _ends_cleanly(path):
        repair_jsonl_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException as exc:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, start)  # shrinking needs no space; earlier lines are untouched
            if isinstance(exc, OSError):
                error = _disk_full(exc, path)
                if error is not exc:
                    raise error from exc
            raise
    finally:
        os.close(fd)


def read_json(path: Path, what: str = "result file") -> Any:
    """Parsed JSON; a missing or malformed file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"missing {what}: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"malformed {what} {path}: {exc}") from None


def _parse_line(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


def _last_line(data: bytes) -> tuple[int, bytes]:
    """(offset, bytes) of the last line of `data`, its newline left out."""
    body = data[:-1] if data.endswith(b"\n") else data
    start = body.rfind(b"\n") + 1
    return start, body[start:]


def _is_torn(raw: bytes) -> bool:
    """A last line that is not one whole JSON record: cut mid-write, or zeros a crash left where it should be."""
    if not raw.strip(b" \t\r\x00"):
        return bool(raw.strip(b" \t\r"))  # only zeros: torn; blank: just a blank line
    try:
        _parse_line(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return False


def read_jsonl(path: Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """Read JSON lines. A torn last line (a run killed mid-append) is skipped with a warning on stderr; a malformed
    line before it is a UsageError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records = []
    for number, raw in enumerate(lines, start=1):
        if number == len(lines) and _is_torn(raw):
            if warn:
                print(
                    f"warning: {path} line {number}: incomplete last line skipped ({len(raw)} bytes; the run was "
                    "interrupted while writing it)",
                    file=sys.stderr,
                )
            break
        if not raw.strip(b" \t\r"):
            continue
        try:
            records.append(_parse_line(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"malformed result file {path} line {number}: {exc}") from None
    return records


def repair_jsonl_tail(path: Path) -> str | None:
    """Make `path` end after its last complete record: cut a torn last line off, or end a whole last record that
    lacks its newline. Returns what was done, or None when the file was already clean (or is absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data:
        return None
    start, last = _last_line(data)
    if _is_torn(last):
        with open(path, "r+b") as handle:
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
        return f"{path}: cut an incomplete last line ({len(data) - start} bytes) back to the last complete record"
    if not data.endswith(b"\n"):
        with open(path, "ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return f"{path}: ended its last record with the missing newline"
    return None


def _ends_cleanly(path: Path) -> bool:
    """True when `path` is absent, empty, or ends with a newline (the cheap test before every append)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
    except FileNotFoundError:
        return True


# -- checks of output paths, before any work ---------------------------------------------------------------------
def _probe_dir(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a file in `folder`: the one test that also holds for root and read-only filesystems."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".vistog-write-test-")
    except OSError as exc:
        raise UsageError(f"{flag} {target}: cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _existing_ancestor(path: Path, flag: str, target: Path) -> Path:
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"{flag} {target}: {folder} is a file, not a folder")
            return folder
    return Path(".")


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """UsageError (one line naming `flag`) unless `path` is a folder this process can write in, or one it can create.
    Creates nothing; call it before any work."""
    target = Path(path)
    folder = _existing_ancestor(target.absolute(), flag, target)
    _probe_dir(folder, flag, target)
    return target


def check_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """UsageError (one line naming `flag`) unless a file can be written at `path` (its folder writable or creatable,
    the path no folder, an existing file writable). Creates nothing; call it before any work."""
    target = Path(path)
    absolute = target.absolute()
    if absolute.is_dir():
        raise UsageError(f"{flag} {target}: is a folder, not a file")
    folder = _existing_ancestor(absolute.parent, flag, target)
    _probe_dir(folder, flag, target)
    if absolute.exists():
        try:
            with open(absolute, "ab"):
                pass
        except OSError as exc:
            raise UsageError(f"{flag} {target}: cannot write: {exc.strerror or exc}") from None
    return target


def write_output_text(path: str | os.PathLike, text: str, flag: str) -> Path:
    """Write a user-named output file (atomically when it is a regular file; a device or pipe in place). An
    unwritable path is a UsageError naming `flag`; a full disk stays an OSError, which the CLI reports as such."""
    target = Path(path)
    try:
        if (
            target.exists() and not target.is_file()
        ):  # a device or a pipe (/dev/stdout): written in place, never replaced
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            write_text_atomic(target, text)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise _disk_full(exc, target) from None
        raise UsageError(f"{flag} {target}: cannot write: {exc.strerror or exc}") from None
    return target


# -- what a full disk left behind ---------------------------------------------------------------------------------
def run_folder_of(path: str | os.PathLike | None) -> Path | None:
    """The run folder (a folder holding manifest.json) that `path` lies in, or None."""
    if not path:
        return None
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if (folder / MANIFEST_FILE).is_file():
            return folder
    return None


def disk_full_message(exc: OSError, resume_hint: bool = False) -> str:
    """One line for a full disk: which file could not be written, and what the run folder already holds (its
    earlier files are whole: JSON files are replaced atomically, failed appends are cut back)."""
    filename = exc.filename or "a file"
    line = f"{DISK_FULL_REASONS.get(exc.errno, exc.strerror or 'no space left')} writing {filename}"
    folder = run_folder_of(exc.filename)
    if folder is None:
        return line + "; the files written before it are intact"
    try:
        cells = RunDir(folder).cells()
        records = len(read_jsonl(folder / PROFILE_FILE, warn=False))
    except (UsageError, OSError):
        return line + f"; saved: {folder} (its metrics.json could not be read back)"
    ok = sum(c.ok for c in cells)
    line += f"; saved: {folder} ({len(cells)} cell(s) recorded, {ok} ok, {records} profile record(s))"
    return line + (f"; free space, then `vistog-bench run --resume {folder}` completes it" if resume_hint else "")


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
        return self.path / SAMPLES_DIR / f"{safe_file_stem(key.slug())}.jsonl"

    # -- plan cells: one writer each, merged into metrics.json ------------------------------------------------------
    def cell_dir(self, stem: str) -> Path:
        """The folder of plan cell `stem` (`<method>__<budget>__<cell_id>`): result.json, profile.jsonl, .lock."""
        return self.path / CELLS_DIR / stem

    def task_files(self, stem: str, task: str) -> Path:
        """The folder lmms-eval writes plan cell `stem`'s own files for `task` under (its submissions/: TextVQA,
        MMBench, captions; names fixed per task, or stamped to the second), so no cell or task overwrites another's."""
        return self.cell_dir(stem) / safe_file_stem(task)

    def record_plan_cell(
        self, stem: str, index: int, cell_id: str, result: CellResult | None = None, templates: dict | None = None
    ) -> None:
        """Add or replace `result` (and note prompt `templates`: checkpoint -> entry) in plan cell `stem`'s
        result.json, rewritten atomically. Only the process running the cell calls it."""
        path = self.cell_dir(stem) / CELL_RESULT_FILE
        data = read_json(path) if path.is_file() else {}
        records = [r for r in data.get("records", []) if result is None or _record_key(r) != result.key]
        if result is not None:
            records.append(dataclasses.asdict(result))
        data = {
            "cell_id": cell_id,
            "index": index,
            "records": records,
            "prompt_templates": {**data.get("prompt_templates", {}), **(templates or {})},
        }
        write_json(path, data)

    def append_cell_profile(self, stem: str, records: Iterable[ProfileRecord]) -> None:
        append_jsonl(self.cell_dir(stem) / PROFILE_FILE, (dataclasses.asdict(r) for r in records))

    def begin_plan_cell(self, stem: str, keep: set[CellKey]) -> None:
        """Before a cell runs (again): its profile lines of tasks not in `keep` (not ok, measured again) go, and a
        torn last line is cut off."""
        path = self.cell_dir(stem) / PROFILE_FILE
        repair_jsonl_tail(path)
        if path.is_file():
            lines = [r for r in read_jsonl(path) if _record_key(r) in keep]
            write_jsonl(path, lines)

    def plan_cell_files(self) -> list[tuple[str, dict]]:
        """(stem, result.json) of every plan cell recorded so far, in plan order (index, then stem)."""
        found = []
        for path in (self.path / CELLS_DIR).glob(f"*/{CELL_RESULT_FILE}"):
            data = read_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("records"), list):
                raise UsageError(f"malformed result file {path}: expected an object with records")
            found.append((path.parent.name, data))
        return sorted(found, key=lambda item: (item[1].get("index", 0), item[0]))

    def merged_cells(self) -> tuple[list[CellResult], list[tuple[str, dict]]]:
        """The run's cells as `merge()` would write them (nothing is written), and the plan cells' files."""
        files = self.plan_cell_files()
        planned = [
            record_from_dict(CellResult, item, self.cell_dir(stem) / CELL_RESULT_FILE, index)
            for stem, data in files
            for index, item in enumerate(data["records"])
        ]
        claimed = {c.key for c in planned}
        return [c for c in self.cells() if c.key not in claimed] + planned, files

    def merge(self) -> list[CellResult]:
        """Rebuild metrics.json from the plan cells' result.json files, in plan order, after the records no cell file
        claims (a run written before plan cells existed); fold the cells' prompt templates into the manifest. Written
        only where it changes (a run with no plan cell files is left as it is), under `.merge.lock`: the same files
        give the same bytes, whoever merges and whenever. Returns the cells."""
        if not (self.path / CELLS_DIR).is_dir():
            return self.cells()
        with self._merge_lock():
            cells, files = self.merged_cells()
            if not files:
                return cells
            text = json.dumps([dataclasses.asdict(c) for c in cells], indent=2, default=str) + "\n"
            path = self.path / METRICS_FILE
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_text_atomic(path, text)
            templates = {k: v for _, data in files for k, v in data.get("prompt_templates", {}).items()}
            if templates and (self.path / MANIFEST_FILE).is_file():
                manifest = self.manifest()
                if any(manifest.prompt_templates.get(k) != v for k, v in templates.items()):
                    merged = {**manifest.prompt_templates, **templates}
                    self.write_manifest(dataclasses.replace(manifest, prompt_templates=merged))
        return cells

    def unfinished(self) -> list[str]:
        """One line naming the cells the launch record (launch.json) plans that have a task not recorded yet; none
        when every cell has ended or the run has no launch record."""
        path = self.path / LAUNCH_FILE
        if not path.is_file():
            return []
        recorded = {c.key for c in self.merged_cells()[0]}
        missing = [
            f"{c['method']}@{c['budget']} ({c['cell_id']}, {c.get('state', 'queued')})"
            for c in read_json(path, "launch record").get("cells", [])
            if any(CellKey(t, c["method"], c["budget"]) not in recorded for t in c.get("tasks", []))
        ]
        return [f"{len(missing)} cell(s) not finished, left out: {', '.join(missing)}"] if missing else []

    def merged_profile_lines(self) -> list[dict[str, Any]]:
        """profile.jsonl's lines of cells no plan cell claims, then each plan cell's profile lines in plan order."""
        files = self.plan_cell_files()
        claimed = {_record_key(r) for _, data in files for r in data["records"]}
        lines = [r for r in read_jsonl(self.path / PROFILE_FILE) if _record_key(r) not in claimed]
        for stem, _ in files:
            lines += read_jsonl(self.cell_dir(stem) / PROFILE_FILE)
        return lines

    def merge_profile(self) -> None:
        """Rewrite profile.jsonl as `merged_profile_lines()` where it differs; only a run's coordinator calls it
        (holding `lock()`), once its workers are done."""
        lines = self.merged_profile_lines()
        text = "".join(json.dumps(r, default=str) + "\n" for r in lines)
        path = self.path / PROFILE_FILE
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if text != current and (text or path.is_file()):
            write_text_atomic(path, text)

    @contextlib.contextmanager
    def _merge_lock(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.path / MERGE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waited for: a merge takes milliseconds
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def cell_lock(self, stem: str) -> Iterator[None]:
        """Hold plan cell `stem`'s `.lock` while a worker runs it: a second worker given the same cell is refused."""
        with _flock(self.cell_dir(stem) / LOCK_FILE, f"cell {stem} of run {self.path} is being run by another worker"):
            yield

    # -- resuming ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `<run>/.lock` (an exclusive `flock`, never waited for) while writing this run: a second process that
        tries is refused with a UsageError. The kernel drops the lock when its holder exits, killed or not. Workers
        of the run (`cell_lock`) do not take it: the coordinator holds it while they run."""
        lock_path = self.path / LOCK_FILE
        busy = f"run {self.path} is in use: another process holds {lock_path} (a run or --resume of it is still going)"
        with _flock(lock_path, busy + "; wait for it or stop it"):
            yield

    def in_use(self) -> bool:
        """Whether a process holds the run's lock now (its coordinator is running it), probed without waiting."""
        try:
            with self.lock():
                return False
        except UsageError:
            return True

    def prepare_resume(self) -> list[str]:
        """Make the folder safe to append to again, and say what was changed (one message each):

        - a torn last line of `profile.jsonl` or of a sample log (a kill mid-append) is cut back to the last complete
          record;
        - profile records of cells that are not `ok` in metrics.json (failed, OOM, or interrupted before they were
          recorded) are dropped, since a resumed run measures those cells again;
        - temporary files of atomic writes a kill left behind are removed.
        Call it while holding `lock()`, before the sweep."""
        notes = []
        for path in [self.path / PROFILE_FILE, *sorted((self.path / SAMPLES_DIR).glob("*.jsonl"))]:
            note = repair_jsonl_tail(path)
            if note:
                notes.append(note)
        note = self._drop_profile_of_unfinished_cells()
        if note:
            notes.append(note)
        for tmp in sorted(self.path.rglob(".*.tmp")):
            if tmp.is_file():
                tmp.unlink()
                notes.append(f"{tmp}: removed a temporary file an interrupted write left behind")
        return notes

    def _drop_profile_of_unfinished_cells(self) -> str | None:
        path = self.path / PROFILE_FILE
        if not path.is_file():
            return None
        ok = {c.key for c in self.cells() if c.ok}
        read_jsonl(path)  # a malformed line is a UsageError naming it; after repair_jsonl_tail every line parses
        lines = [line for line in path.read_bytes().split(b"\n") if line.strip(b" \t\r")]
        kept, dropped = [], {}
        for raw in lines:
            record = _parse_line(raw)
            task = record.get("task") if isinstance(record, dict) else None
            if task is not None:
                key = CellKey(task, record.get("method"), record.get("budget"))
                if key not in ok:
                    dropped[key] = dropped.get(key, 0) + 1
                    continue
            kept.append(raw)
        if not dropped:
            return None
        write_text_atomic(path, "".join(raw.decode("utf-8") + "\n" for raw in kept))
        cells = ", ".join(f"{k.slug()} ({n})" for k, n in sorted(dropped.items(), key=lambda kv: kv[0].slug()))
        return (
            f"{path}: dropped {sum(dropped.values())} profile record(s) of cells that are not ok and will be "
            f"measured again: {cells}"
        )

    # -- reading -------------------------------------------------------------------------------------------------
    def manifest(self) -> RunManifest:
        return record_from_dict(RunManifest, read_json(self.path / MANIFEST_FILE), self.path / MANIFEST_FILE)

    def cells(self) -> list[CellResult]:
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        data = read_json(path)
        if not isinstance(data, list):
            raise UsageError(f"malformed result file {path}: expected a list of cell records")
        cells = [record_from_dict(CellResult, item, path, index) for index, item in enumerate(data)]
        first: dict[CellKey, int] = {}
        for index, cell in enumerate(cells):
            if cell.key in first:
                raise UsageError(
                    f"malformed result file {path}: CellResult records {first[cell.key]} and {index} are the same cell "
                    f"({cell.task} {cell.method}@{cell.budget}); a run records each cell once"
                )
            first[cell.key] = index
        return cells

    def profile(self) -> list[ProfileRecord]:
        """The run's profile records, those of plan cells still running or not yet merged included."""
        path = self.path / PROFILE_FILE
        lines = self.merged_profile_lines()
        return [record_from_dict(ProfileRecord, item, path, index) for index, item in enumerate(lines)]


def _record_key(record: dict) -> CellKey:
    return CellKey(record.get("task"), record.get("method"), record.get("budget"))


@contextlib.contextmanager
def _flock(lock_path: Path, busy: str) -> Iterator[None]:
    """An exclusive `flock` on `lock_path` (created), never waited for: UsageError(`busy`) when another holds it."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(busy) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def load_run(path: str | os.PathLike) -> RunDir:
    """Open an existing run folder, checking that it is one (a manifest is present and readable)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UsageError(f"not a run folder: {run.path}")
    run.manifest()
    return run
