"""Outputs and exit codes say the truth: unwritable outputs are one line and exit 2 before any work, `check` never
prints a verdict it then contradicts, a NaN headline is n/a in the report, empty or vacuous baselines are refused.

Run folders are written through `vistog_bench.results`; the CLI is driven through `vistog_bench.cli.main`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from testers import md_row

from vistog_bench import cli
from vistog_bench.errors import UsageError
from vistog_bench.regress import write_baseline
from vistog_bench.report import build_report
from vistog_bench.report.render import to_markdown
from vistog_bench.results import (
    CellResult,
    ProfileRecord,
    RunDir,
    RunManifest,
    check_writable_dir,
    check_writable_file,
    failed_status,
)

TASK = "shapes_vqa"


def make_run(root: Path, run_id: str = "run-a", cells=None) -> Path:
    run = RunDir(root / run_id)
    run.write_manifest(
        RunManifest(
            run_id=run_id,
            command=["vistog-bench", "run"],
            config={},
            git_sha="0" * 40,
            versions={},
            device={"name": "cpu"},
            seed=0,
            started_at="2026-12-01T10:00:00+00:00",
        )
    )
    cells = (
        cells
        if cells is not None
        else [
            CellResult(TASK, "none", 64, "ok", {"exact_match,none": 0.85, "colour_exact_match,none": 0.8}, {}, 20),
            CellResult(TASK, "vistog", 16, "ok", {"exact_match,none": 0.80, "colour_exact_match,none": 0.9}, {}, 20),
        ]
    )
    for cell in cells:
        run.record_cell(cell)
        run.append_profile(
            [
                ProfileRecord(
                    kind="request",
                    method=cell.method,
                    budget=cell.budget,
                    batch_size=1,
                    device="cpu",
                    dtype="float32",
                    task=cell.task,
                    total_ms=10.0 + cell.budget,
                    flops={"prefill": 1e6 * cell.budget},
                )
            ]
        )
    return run.path


def one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0]
    return captured.out


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("not a folder")
    return path


def _unwritable_system_dir() -> Path:
    """A folder no one may create files in, root included (sysfs), or a read-only one made for a non-root user."""
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("/sys is writable here")


# ---------------------------------------------------------------------------------------------------------------
# the helpers
# ---------------------------------------------------------------------------------------------------------------
def test_writable_checks_accept_what_can_be_created_and_create_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable_dir(target, "--output") == target
    assert check_writable_file(tmp_path / "x" / "junit.xml", "--junit") == tmp_path / "x" / "junit.xml"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: a_file(tmp) / "sub",  # a file where a folder must be
        lambda tmp: a_file(tmp),  # the output folder itself is a file
        lambda tmp: _unwritable_system_dir() / "out",  # a filesystem that takes no new files, even from root
    ],
)
def test_writable_dir_refuses_in_one_line(tmp_path, make):
    target = make(tmp_path)
    with pytest.raises(UsageError) as error:
        check_writable_dir(target, "--output")
    assert str(error.value).startswith(f"--output {target}:") and "\n" not in str(error.value)


def test_writable_file_refuses_a_folder_and_a_path_under_a_file(tmp_path):
    with pytest.raises(UsageError, match="is a folder, not a file"):
        check_writable_file(tmp_path, "--junit")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_writable_file(a_file(tmp_path) / "junit.xml", "--junit")


# ---------------------------------------------------------------------------------------------------------------
# unwritable outputs through the CLI: exit 2, one line, before the work
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--junit", "--summary"])
def test_check_with_an_unwritable_output_is_exit_2_before_any_verdict(tmp_path, capsys, flag):
    run = make_run(tmp_path)
    baseline = write_baseline(run, "base", tmp_path / "baselines")
    target = a_file(tmp_path) / "out.xml"
    capsys.readouterr()
    assert cli.main(["check", str(run), "--baseline", str(baseline), flag, str(target)]) == 2
    out = one_error_line(capsys, flag, str(target))
    assert out == ""  # no table, no OK: the check never ran


def test_check_with_a_folder_as_junit_is_exit_2(tmp_path, capsys):
    run = make_run(tmp_path)
    baseline = write_baseline(run, "base", tmp_path / "baselines")
    capsys.readouterr()
    assert cli.main(["check", str(run), "--baseline", str(baseline), "--junit", str(tmp_path)]) == 2
    assert one_error_line(capsys, "--junit", "is a folder") == ""


def test_check_writes_its_files_and_then_prints_the_verdict(tmp_path, capsys):
    run = make_run(tmp_path)
    baseline = write_baseline(run, "base", tmp_path / "baselines")
    junit, summary = tmp_path / "ci" / "junit.xml", tmp_path / "ci" / "summary.md"
    assert (
        cli.main(["check", str(run), "--baseline", str(baseline), "--junit", str(junit), "--summary", str(summary)])
        == 0
    )
    assert "OK:" in capsys.readouterr().out
    assert "<testsuites" in junit.read_text() and "pass" in summary.read_text()


def test_report_with_an_unwritable_out_is_exit_2_and_writes_nothing(tmp_path, capsys):
    run = make_run(tmp_path)
    target = _unwritable_system_dir() / "report"
    assert cli.main(["report", str(run), "--out", str(target), "--no-reference"]) == 2
    one_error_line(capsys, "--out", str(target))
    target = a_file(tmp_path) / "report"
    assert cli.main(["report", str(run), "--out", str(target), "--no-reference"]) == 2
    one_error_line(capsys, "--out", "is a file, not a folder")


def test_profile_with_an_unwritable_output_is_exit_2_before_measuring(tmp_path, capsys):
    target = a_file(tmp_path) / "results"
    argv = [
        "profile",
        "--shape",
        "tiny",
        "--analytic",
        "--budgets",
        "16",
        "--batch-sizes",
        "1",
        "--new-tokens",
        "2",
        "--output",
        str(target),
    ]
    assert cli.main(argv) == 2
    assert one_error_line(capsys, "--output", str(target)) == ""


def test_baseline_update_into_an_unwritable_folder_is_exit_2(tmp_path, capsys):
    run = make_run(tmp_path)
    out_dir = a_file(tmp_path) / "baselines"
    assert cli.main(["baseline", "update", str(run), "--name", "base", "--out-dir", str(out_dir)]) == 2
    one_error_line(capsys, "--out-dir", "is a file, not a folder")


# ---------------------------------------------------------------------------------------------------------------
# a NaN headline is n/a
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reduced",
    [
        {"exact_match,none": math.nan, "colour_exact_match,none": 1.0},  # lmms-eval's NaN, written as is
        {"colour_exact_match,none": 1.0},  # the runner drops non-finite values: the headline is simply absent
    ],
)
def test_a_nan_headline_is_na_not_another_metric(tmp_path, reduced):
    run = make_run(
        tmp_path,
        cells=[
            CellResult(TASK, "none", 64, "ok", {"exact_match,none": 0.85, "colour_exact_match,none": 0.8}, {}, 20),
            CellResult(TASK, "vistog", 16, "ok", reduced, {}, 20),
            CellResult(TASK, "vistog", 4, "ok", {"exact_match,none": 0.80, "colour_exact_match,none": 0.7}, {}, 20),
        ],
    )
    if "exact_match,none" in reduced:
        assert "NaN" in (run / "metrics.json").read_text()
    report = build_report([run], [])
    markdown = to_markdown(report.tables[0])
    header = next(line for line in markdown.splitlines() if line.startswith("| Method"))
    assert "exact_match" in header and "colour" not in header
    row = md_row(markdown, "vistog@16")
    assert row[2].startswith("n/a")
    assert "1.000" not in row[2] and "117.6" not in markdown
    assert "headline metric exact_match is NaN or missing" in markdown
    assert md_row(markdown, "vistog@4")[2] == "0.800"


def test_a_nan_full_budget_headline_gives_no_retention(tmp_path):
    run = make_run(
        tmp_path,
        cells=[
            CellResult(TASK, "none", 64, "ok", {"exact_match,none": math.nan, "colour_exact_match,none": 0.85}, {}, 20),
            CellResult(TASK, "vistog", 16, "ok", {"exact_match,none": 0.80, "colour_exact_match,none": 1.0}, {}, 20),
        ],
    )
    markdown = to_markdown(build_report([run], []).tables[0])
    assert md_row(markdown, "none@64")[2].startswith("n/a")
    row = md_row(markdown, "vistog@16")
    assert row[2] == "0.800" and row[3].startswith("n/a")  # score shown, retention n/a (no full-budget score)
    assert "117.6" not in markdown and "94.1" not in markdown


# ---------------------------------------------------------------------------------------------------------------
# baselines that prove nothing
# ---------------------------------------------------------------------------------------------------------------
def test_check_against_an_empty_baseline_is_exit_2(tmp_path, capsys):
    run = make_run(tmp_path)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"format": "vistog-bench-baseline/1", "name": "empty", "cells": []}))
    assert cli.main(["check", str(run), "--baseline", str(empty)]) == 2
    assert one_error_line(capsys, str(empty), "no cells") == ""


def test_a_baseline_cell_that_failed_and_now_runs_is_fixed_not_a_failure(tmp_path, capsys):
    broken = make_run(
        tmp_path,
        "run-broken",
        cells=[
            CellResult(TASK, "none", 64, "ok", {"exact_match,none": 0.85}, {}, 20),
            CellResult(TASK, "vistog", 16, failed_status("RuntimeError: shape mismatch"), {}, {}, 0),
        ],
    )
    baseline = write_baseline(broken, "base", tmp_path / "baselines")
    fixed = make_run(
        tmp_path,
        "run-fixed",
        cells=[
            CellResult(TASK, "none", 64, "ok", {"exact_match,none": 0.85}, {}, 20),
            CellResult(TASK, "vistog", 16, "ok", {"exact_match,none": 0.80}, {}, 20),
        ],
    )
    capsys.readouterr()
    assert cli.main(["check", str(fixed), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    status_line = next(line for line in out.splitlines() if "vistog" in line and " status " in line)
    assert "fixed" in status_line
    assert "FAIL" not in out and "1 fixed" in out


def test_baseline_update_refuses_a_run_without_a_finite_headline(tmp_path, capsys):
    run = make_run(
        tmp_path,
        cells=[
            CellResult(TASK, "none", 64, "ok", {"exact_match,none": math.nan}, {}, 20),
            CellResult(TASK, "vistog", 16, failed_status("boom"), {}, {}, 0),
        ],
    )
    out_dir = tmp_path / "baselines"
    assert cli.main(["baseline", "update", str(run), "--name", "base", "--out-dir", str(out_dir)]) == 2
    one_error_line(capsys, str(run), "no cell with a finite headline metric")
    assert not out_dir.exists()
