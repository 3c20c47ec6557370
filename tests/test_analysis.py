"""The report and `check` derive full budget, retention and speedup the same way (vistog_bench.analysis), and a
speedup resting on noisy timings is shown with its interval and flagged.

Run folders are written through `vistog_bench.results` (as the runner writes them) and read back by the real
report and check code paths.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer

from vistog_bench.analysis import (
    CV_THRESHOLD,
    Measurement,
    bootstrap_ratio_interval,
    full_budget,
    measurements,
    speedup,
)
from vistog_bench.regress import build_baseline, derive_values
from vistog_bench.report import build_report
from vistog_bench.report.data import build_report_data, read_runs
from vistog_bench.report.figures import retention_vs_speedup
from vistog_bench.report.render import to_markdown
from vistog_bench.results import CellKey, CellResult, ProfileRecord, RunDir, RunManifest

TASK = "gqa"
METRIC = "exact_match,none"


def make_run(
    root: Path, run_id: str, sweep: dict[tuple[str, int], tuple[float, list[float]]], *, controlled: bool = False
) -> Path:
    """One task; per (method, budget) a score and the total_ms of its requests (or one controlled record whose
    median is the first time)."""
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
            started_at="2026-12-01T10:00:00",
        )
    )
    records = []
    for (method, budget), (score, times) in sweep.items():
        run.record_cell(CellResult(TASK, method, budget, "ok", {METRIC: score}, {}, n_samples=len(times)))
        common = {
            "method": method,
            "budget": budget,
            "batch_size": 1,
            "device": "cpu",
            "dtype": "float32",
            "flops": {"prefill": 1e6 * budget},
        }
        if controlled:
            records.append(
                ProfileRecord(
                    kind="controlled",
                    total_ms=times[0],
                    execution_path="eager",
                    stats={"total": {"median": times[0], "cv": 0.01, "n": 20}},
                    **common,
                )
            )
        else:
            records += [ProfileRecord(kind="request", task=TASK, total_ms=t, **common) for t in times]
    run.append_profile(records)
    return run.path


def report_and_check(run: Path) -> list[tuple[CellKey, float | None, float | None, float | None, float | None]]:
    """Per row of the report: (cell, report retention, check retention, report speedup, check speedup)."""
    data = build_report_data(read_runs([run]))
    run_dir = RunDir(run)
    values = derive_values(run_dir.cells(), run_dir.profile())
    out = []
    for row in data.rows:
        key = CellKey(TASK, row.method, row.budget)
        group = row.efficiency.measurement.label
        report_retention = row.scores[TASK].retention
        out.append(
            (
                key,
                None if report_retention is None else report_retention / 100,
                values[key].get(f"retention/{METRIC}"),
                row.speedup.value if row.speedup else None,
                values[key].get(f"speedup/total_ms[{group}]"),
            )
        )
    return out


STAND_IN_SWEEP = {  # no `none`: pool@144 is the run's largest budget and stands in as the full budget for all
    ("pool", 144): (0.60, [100.0, 104.0, 98.0, 101.0]),
    ("pool", 36): (0.45, [50.0, 52.0, 49.0, 51.0]),
    ("tome", 64): (0.54, [80.0, 82.0, 79.0, 81.0]),
}


@pytest.mark.parametrize("controlled", [False, True], ids=["requests", "controlled"])
def test_report_and_check_agree_without_a_none_method(tmp_path, controlled):
    rows = report_and_check(make_run(tmp_path, "run-stand-in", STAND_IN_SWEEP, controlled=controlled))
    by_cell = {key: row for key, *row in rows}
    for key, (report_retention, check_retention, report_speedup, check_speedup) in by_cell.items():
        assert report_retention == pytest.approx(check_retention), key
        assert report_speedup == pytest.approx(check_speedup), key
    tome = by_cell[CellKey(TASK, "tome", 64)]
    assert tome[1] == pytest.approx(0.54 / 0.60)  # divided by pool@144, never by itself (the old check gave 1.0)
    full_ms = 100.5 if not controlled else 100.0  # median of the four requests, or the controlled median
    assert tome[3] == pytest.approx(full_ms / (80.5 if not controlled else 80.0))


def test_report_and_check_agree_with_none_and_the_baseline_holds_the_same_numbers(tmp_path):
    sweep = {("none", 576): (0.60, [200.0, 210.0, 190.0]), ("vistog", 64): (0.57, [50.0, 55.0, 45.0]), **STAND_IN_SWEEP}
    run = make_run(tmp_path, "run-none", sweep)
    rows = report_and_check(run)
    for key, report_retention, check_retention, report_speedup, check_speedup in rows:
        assert report_retention == pytest.approx(check_retention), key
        assert report_speedup == pytest.approx(check_speedup), key
    baseline = {CellKey(c["task"], c["method"], c["budget"]): c["values"] for c in build_baseline(run, "b")["cells"]}
    tome = baseline[CellKey(TASK, "tome", 64)]
    assert tome[f"retention/{METRIC}"] == pytest.approx(0.54 / 0.60)  # none@576 is the full budget now
    assert tome["speedup/total_ms[request]"] == pytest.approx(200.0 / 80.5)


def test_full_budget_prefers_none_and_names_a_stand_in():
    assert full_budget([("pool", 144), ("none", 64), ("vistog", 16)]).method == "none"
    stand_in = full_budget([("tome", 144), ("pool", 144), ("pool", 36)])
    assert (stand_in.method, stand_in.budget) == ("pool", 144)  # first by name on a tie
    assert "has no `none` cells" in stand_in.note("run-x", "cells")


def test_controlled_records_of_two_output_lengths_are_two_measurements():
    common = {
        "kind": "controlled",
        "method": "none",
        "budget": 64,
        "batch_size": 1,
        "device": "cpu",
        "dtype": "float32",
    }
    records = [
        ProfileRecord(output_tokens=1, total_ms=10.0, **common),
        ProfileRecord(output_tokens=32, total_ms=90.0, **common),
    ]
    found = measurements(records, "none", 64)
    assert sorted(m.label for m in found) == ["controlled,eager,bs1,out1", "controlled,eager,bs1,out32"]
    assert sorted(m.total_ms for m in found) == [10.0, 90.0]  # never the median of the two


# ---------------------------------------------------------------------------------------------------------------
# intervals and flags
# ---------------------------------------------------------------------------------------------------------------
def requests(times: list[float], budget: int = 64) -> Measurement:
    return Measurement(
        "request",
        None,
        None,
        None,
        tuple(
            ProfileRecord(
                kind="request", method="m", budget=budget, batch_size=1, device="cpu", dtype="float32", total_ms=t
            )
            for t in times
        ),
    )


def test_bootstrap_interval_is_seeded_and_brackets_the_ratio():
    full, fast = [100.0, 102.0, 98.0, 101.0, 99.0, 100.5], [50.0, 51.0, 49.0, 50.5, 49.5, 50.2]
    low, high = bootstrap_ratio_interval(full, fast)
    assert (low, high) == bootstrap_ratio_interval(full, fast)  # the same numbers on every call
    assert 1.9 < low <= 100.25 / 50.1 <= high < 2.1
    assert bootstrap_ratio_interval([100.0], fast) == (None, None)  # one timing: no interval


def test_quiet_timings_are_not_flagged_and_noisy_ones_are():
    quiet = speedup(requests([100.0, 101.0, 99.0, 100.0, 100.5]), requests([50.0, 50.5, 49.5, 50.0, 50.2]))
    assert not quiet.flagged and quiet.cv < CV_THRESHOLD and quiet.low > 1.0
    noisy = speedup(requests([100.0, 101.0, 99.0, 100.0]), requests([40.0, 160.0, 60.0, 140.0]))
    assert noisy.noisy and noisy.includes_one and noisy.flagged
    assert any("includes 1.0" in reason for reason in noisy.flag_reasons())


def test_report_marks_a_noisy_speedup_and_draws_it_hollow(tmp_path):
    sweep = {
        ("none", 576): (0.60, [100.0, 101.0, 99.0, 100.0, 100.5]),
        ("vistog", 64): (0.57, [50.0, 50.5, 49.5, 50.0, 50.2]),  # steady: a tight interval, no mark
        ("pool", 64): (0.50, [40.0, 160.0, 60.0, 140.0]),
    }  # 4 noisy requests: CV ~ 60 %, interval spans 1
    run = make_run(tmp_path, "run-noisy", sweep)
    report = build_report([run], [])
    md = to_markdown(report.tables[0])
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    header = [c.strip() for c in lines["Method"].strip("|").split("|")]
    pool = [c.strip() for c in lines["pool@64"].strip("|").split("|")]
    vistog = [c.strip() for c in lines["vistog@64"].strip("|").split("|")]
    speed, ci, n = header.index("Speedup (×)"), header.index("95% CI of speedup"), header.index("Timed (n)")
    assert "<sup>" in pool[speed] and "<sup>" not in vistog[speed]
    assert pool[n] == "4 requests" and vistog[n] == "5 requests"
    low, high = (float(x) for x in vistog[ci].split("–"))
    assert 1.9 < low < 2.0 < high < 2.1
    assert "speedup of pool@64 uncertain" in md and "includes 1.0" in md
    data_pool = next(r for r in report.data.rows if r.method == "pool")
    assert data_pool.speedup.flagged and not math.isnan(data_pool.speedup.value)
    axes = retention_vs_speedup(report.data, None, []).axes[0]
    hollow = [c for c in axes.collections if len(c.get_facecolors()) and tuple(c.get_facecolors()[0]) == (1, 1, 1, 1)]
    assert [tuple(c.get_offsets()[0]) for c in hollow] == [(data_pool.speedup.value, data_pool.avg_retention)]
    assert len([c for c in axes.containers if isinstance(c, ErrorbarContainer)]) == 2  # vistog@64 and pool@64
