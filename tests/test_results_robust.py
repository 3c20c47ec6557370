"""Run folders survive kills and full disks: torn appends, resumed runs, two writers, ENOSPC, run ids.

Run folders are written through `vistog_bench.results` (as the runner and the profiler write them); kills are real
signals to real processes, full disks are real `/dev/full` writes and a real file-size limit (`RLIMIT_FSIZE`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vistog_bench import cli
from vistog_bench.errors import UsageError
from vistog_bench.regress import write_baseline
from vistog_bench.results import (
    PROFILE_FILE,
    CellResult,
    ProfileRecord,
    RunDir,
    RunManifest,
    append_jsonl,
    disk_full_message,
    failed_status,
    new_run_id,
    read_jsonl,
)

TASK = "shapes_vqa"
METRIC = "exact_match,none"
CELLS = {("none", 64): "ok", ("vistog", 16): "ok", ("vistog", 4): failed_status("RuntimeError: boom")}
REQUESTS_PER_CELL = 5
REPO = Path(__file__).resolve().parents[1]


def request(method: str, budget: int, index: int, task: str = TASK) -> ProfileRecord:
    return ProfileRecord(
        kind="request",
        method=method,
        budget=budget,
        batch_size=1,
        device="cpu",
        dtype="float32",
        task=task,
        visual_tokens=budget,
        total_ms=10.0 + budget + index,
        prefill_ms=5.0,
        flops={"prefill": 1e9 * budget},
        peak_memory_bytes={"cpu": 1000 + budget},
        kv_cache_bytes=64 * budget,
    )


def make_run(root: Path, run_id: str = "run-a", cells=None) -> RunDir:
    """A run as `vistog-bench run` writes it: manifest, one cell record per (method, budget), request records
    appended after each cell."""
    run = RunDir(root / run_id)
    run.write_manifest(
        RunManifest(
            run_id=run_id,
            command=["vistog-bench", "run"],
            config={"limit": 20},
            git_sha="0" * 40,
            versions={},
            device={"name": "cpu"},
            seed=0,
            started_at="2026-12-01T10:00:00+00:00",
        )
    )
    for (method, budget), status in (CELLS if cells is None else cells).items():
        ok = status == "ok"
        run.record_cell(
            CellResult(
                TASK,
                method,
                budget,
                status,
                {METRIC: 0.9 - 0.001 * (64 - budget)} if ok else {},
                {},
                n_samples=20 if ok else 0,
                elapsed_s=1.0,
            )
        )
        run.append_profile([request(method, budget, i) for i in range(REQUESTS_PER_CELL)])
    return run


def tear(path: Path, record: dict, keep: float = 0.5) -> bytes:
    """Append the first `keep` of a record's line, as a kill or a full disk in the middle of the write leaves it."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    piece = line[: int(len(line) * keep)]
    with open(path, "ab") as handle:
        handle.write(piece)
    return piece


def run_cli(argv: list[str]) -> int:
    return cli.main(argv)


def dev_full() -> Path:
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    path = Path("/dev/full")
    if not path.is_char_device():
        pytest.skip("no /dev/full character device here")
    return path


# ---------------------------------------------------------------------------------------------------------------
# a torn last line
# ---------------------------------------------------------------------------------------------------------------
def test_report_and_check_read_a_run_whose_last_profile_line_is_torn(tmp_path, capsys):
    run = make_run(tmp_path)
    baseline = write_baseline(run.path, "base", tmp_path / "baselines")
    # cut inside a multi-byte character: the old reader decoded the whole file first and rejected the run for good
    record = dataclasses.asdict(request("vistog", 16, 99, task="shapes_vqa_é_ü"))
    line = json.dumps(record, ensure_ascii=False).encode("utf-8")
    cut = line.index("é".encode()) + 1
    with open(run.path / PROFILE_FILE, "ab") as handle:
        handle.write(line[:cut])

    capsys.readouterr()
    assert run_cli(["check", str(run.path), "--baseline", str(baseline), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "OK:" in captured.out
    warnings = [line for line in captured.err.splitlines() if "incomplete last line" in line]
    assert len(warnings) == 1 and f"{PROFILE_FILE} line {3 * REQUESTS_PER_CELL + 1}" in warnings[0]

    out = tmp_path / "report"
    assert run_cli(["report", str(run.path), "--out", str(out), "--no-reference", "--formats", "md"]) == 0
    captured = capsys.readouterr()
    assert "incomplete last line" in captured.err
    assert (out / "report.md").is_file()
    assert len(run.profile()) == 3 * REQUESTS_PER_CELL


def test_a_corrupt_middle_line_stays_an_error_naming_file_and_line(tmp_path, capsys):
    run = make_run(tmp_path)
    baseline = write_baseline(run.path, "base", tmp_path / "baselines")
    path = run.path / PROFILE_FILE
    tear(path, dataclasses.asdict(request("none", 64, 7)))
    with open(path, "ab") as handle:  # the next record glued on, as an append without repair left it
        handle.write((json.dumps(dataclasses.asdict(request("none", 64, 8))) + "\n").encode())
        handle.write((json.dumps(dataclasses.asdict(request("none", 64, 9))) + "\n").encode())
    capsys.readouterr()
    assert run_cli(["check", str(run.path), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(path) in err[0] and f"line {3 * REQUESTS_PER_CELL + 1}" in err[0]
    assert "Traceback" not in err[0]


def test_an_append_after_a_torn_tail_does_not_glue_onto_it(tmp_path):
    run = make_run(tmp_path)
    path = run.path / PROFILE_FILE
    tear(path, dataclasses.asdict(request("vistog", 4, 0)))
    run.append_profile([request("vistog", 4, i) for i in range(3)])
    text = path.read_bytes()
    assert text.endswith(b"\n")
    records = read_jsonl(path)  # every line parses: no glued line in the middle
    assert len(records) == 3 * REQUESTS_PER_CELL + 3
    assert len(text.splitlines()) == 3 * REQUESTS_PER_CELL + 3


def test_a_whole_last_record_without_its_newline_is_kept_and_ended(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')  # a kill between the record and its newline
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


# ---------------------------------------------------------------------------------------------------------------
# prepare_resume
# ---------------------------------------------------------------------------------------------------------------
def test_prepare_resume_cuts_the_torn_tail_and_drops_records_of_cells_to_redo(tmp_path):
    run = make_run(tmp_path)  # none@64 ok, vistog@16 ok, vistog@4 failed
    path = run.path / PROFILE_FILE
    # a cell that was being measured when the run was killed: records appended, no cell record yet
    run.append_profile([request("vistog", 2, i) for i in range(3)])
    tear(path, dataclasses.asdict(request("vistog", 2, 3)))
    samples = run.samples_path(run.cells()[0].key)
    samples.parent.mkdir(parents=True, exist_ok=True)
    samples.write_bytes(b'{"doc_id": 0}\n{"doc_id": 1}\n{"doc_')
    stale = run.path / ".metrics.json.abc123.tmp"
    stale.write_text("[")

    notes = run.prepare_resume()

    assert any(str(path) in n and "incomplete last line" in n for n in notes)
    assert any(str(samples) in n and "incomplete last line" in n for n in notes)
    dropped = [n for n in notes if "dropped" in n]
    assert len(dropped) == 1 and f"dropped {REQUESTS_PER_CELL + 3} profile record(s)" in dropped[0]
    assert "shapes_vqa__vistog__4" in dropped[0] and "shapes_vqa__vistog__2" in dropped[0]
    assert not stale.exists()
    assert read_jsonl(samples) == [{"doc_id": 0}, {"doc_id": 1}]
    kept = run.profile()
    assert {(r.method, r.budget) for r in kept} == {("none", 64), ("vistog", 16)}
    assert len(kept) == 2 * REQUESTS_PER_CELL

    # the resumed sweep redoes the two cells: the folder ends with exactly one cell's worth of records per cell
    for budget in (4, 2):
        run.record_cell(CellResult(TASK, "vistog", budget, "ok", {METRIC: 0.8}, {}, n_samples=20))
        run.append_profile([request("vistog", budget, i) for i in range(REQUESTS_PER_CELL)])
    assert len(run.profile()) == 4 * REQUESTS_PER_CELL
    assert run.prepare_resume() == []  # a clean folder is left as it is


def test_prepare_resume_leaves_a_clean_complete_run_byte_for_byte(tmp_path):
    run = make_run(tmp_path, cells={("none", 64): "ok", ("vistog", 16): "ok"})
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    assert run.prepare_resume() == []
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before


# ---------------------------------------------------------------------------------------------------------------
# two writers of one run
# ---------------------------------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys
from vistog_bench.results import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_of_a_run_is_refused_and_a_killed_holder_frees_it(tmp_path):
    run = make_run(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError) as refused, run.lock():
            pytest.fail("the lock was granted twice")
        message = str(refused.value)
        assert str(run.path) in message and "another process" in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    # the kernel dropped the dead holder's lock (no stale lock file to clean up by hand), and a holder in this
    # process still refuses a second one
    with run.lock(), pytest.raises(UsageError), RunDir(run.path).lock():
        pass


# ---------------------------------------------------------------------------------------------------------------
# full disks
# ---------------------------------------------------------------------------------------------------------------
FILL_UP = """
import errno, resource, signal, sys
from vistog_bench.results import append_jsonl
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path, limit = sys.argv[1], int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    append_jsonl(path, [{"kind": "request", "payload": "x" * 20000}, {"kind": "request", "payload": "y"}])
except OSError as exc:
    print(errno.errorcode[exc.errno], flush=True)
    sys.exit(0)
print("written")
"""


def test_an_append_that_fails_half_way_leaves_the_earlier_lines_byte_for_byte(tmp_path):
    run = make_run(tmp_path)
    path = run.path / PROFILE_FILE
    before = path.read_bytes()
    # the file may grow by 100 bytes only: the write stops part-way through the first record
    result = subprocess.run(
        [sys.executable, "-c", FILL_UP, str(path), str(len(before) + 100)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert result.stdout.strip() == "EFBIG"
    assert path.read_bytes() == before
    assert len(read_jsonl(path)) == 3 * REQUESTS_PER_CELL


def test_enospc_on_a_run_folder_names_the_file_and_what_was_saved(tmp_path):
    run = make_run(tmp_path)
    metrics_before = (run.path / "metrics.json").read_bytes()
    profile = run.path / PROFILE_FILE
    saved = profile.read_bytes()
    profile.unlink()
    profile.symlink_to(dev_full())
    with pytest.raises(OSError) as full:
        run.append_profile([request("vistog", 16, 50)])
    assert full.value.errno == errno.ENOSPC
    assert full.value.filename == str(profile)
    message = disk_full_message(full.value, resume_hint=True)
    assert message.startswith(f"no space left on device writing {profile}")
    assert f"saved: {run.path}" in message and "3 cell(s) recorded, 2 ok" in message
    assert f"--resume {run.path}" in message and "\n" not in message
    assert (run.path / "metrics.json").read_bytes() == metrics_before
    profile.unlink()
    profile.write_bytes(saved)
    assert len(run.profile()) == 3 * REQUESTS_PER_CELL


def test_check_on_a_full_disk_exits_3_without_printing_a_verdict(tmp_path, capsys):
    run = make_run(tmp_path)
    baseline = write_baseline(run.path, "base", tmp_path / "baselines")
    junit = tmp_path / "junit.xml"
    junit.symlink_to(dev_full())  # a link of our own: were it ever replaced, /dev/full itself stays untouched
    capsys.readouterr()
    assert run_cli(["check", str(run.path), "--baseline", str(baseline), "--junit", str(junit)]) == 3
    captured = capsys.readouterr()
    assert "OK" not in captured.out and "REGRESSION" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"no space left on device writing {junit}" in err[0]
    assert junit.is_symlink() and junit.is_char_device()  # written in place, not replaced by a regular file


# ---------------------------------------------------------------------------------------------------------------
# run ids
# ---------------------------------------------------------------------------------------------------------------
def test_run_ids_carry_a_unique_suffix():
    ids = {new_run_id("profile-") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"profile-\d{8}-\d{6}-[0-9a-f]{6}", i) for i in ids)


def test_two_profile_runs_get_two_folders(tmp_path, capsys):
    argv = [
        "profile",
        "--shape",
        "tiny",
        "--analytic",
        "--budgets",
        "64,16",
        "--batch-sizes",
        "1",
        "--new-tokens",
        "2",
        "--output",
        str(tmp_path),
    ]
    assert run_cli(argv) == 0
    assert run_cli(argv) == 0
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(folders) == 2
    for folder in folders:
        assert re.fullmatch(r"profile-\d{8}-\d{6}-[0-9a-f]{6}-analytic", folder.name)
        run = RunDir(folder)
        assert run.manifest().run_id == folder.name
        assert len(run.profile()) == 2  # its own two records, none of the other run's
