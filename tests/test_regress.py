"""`vistog-bench check` and `baseline update` on runs written through `vistog_bench.results`.

Runs are built as the runner would write them (CellResult + ProfileRecord through RunDir); the CLI is driven
through `vistog_bench.cli.main` with its command table narrowed to the two commands under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from vistog_bench import cli
from vistog_bench.analysis import FullBudget, full_budget
from vistog_bench.errors import UsageError
from vistog_bench.regress import (
    CheckReport,
    build_baseline,
    check_run,
    derive_values,
    load_baseline,
    load_tolerances,
    write_baseline,
)
from vistog_bench.results import CellKey, CellResult, ProfileRecord, RunDir, RunManifest

TASK = "shapes_count"
METRIC = "exact_match,none"
# (method, budget) -> (score, total_ms, prefill flops): the full budget first.
SWEEP = {
    ("none", 576): (0.80, 100.0, 4.0e9),
    ("vistog", 64): (0.76, 40.0, 0.6e9),
    ("vistog", 16): (0.70, 30.0, 0.2e9),
}


def make_run(
    root: Path,
    run_id: str = "run-a",
    *,
    sweep=None,
    drop_cells=(),
    statuses=None,
    extra_profile=(),
    controlled: bool = True,
    n_samples: int = 50,
) -> Path:
    """Write a run folder: one task, the cells of `sweep`, a controlled profile record per cell (or request
    records when `controlled` is False)."""
    sweep = dict(SWEEP if sweep is None else sweep)
    statuses = statuses or {}
    run = RunDir(root / run_id)
    run.write_manifest(
        RunManifest(
            run_id=run_id,
            command=["vistog-bench", "run"],
            config={"limit": n_samples},
            git_sha="0" * 40,
            versions={"torch": "2.14.1"},
            device={"name": "cpu"},
            seed=0,
            started_at="2026-11-25T10:00:00+00:00",
        )
    )
    records = []
    for (method, budget), (score, total_ms, prefill_flops) in sweep.items():
        if (method, budget) in drop_cells:
            continue
        status = statuses.get((method, budget), "ok")
        metrics = {METRIC: score, "pope_yes_ratio,none": 0.5} if status == "ok" else {}
        run.record_cell(
            CellResult(
                task=TASK,
                method=method,
                budget=budget,
                status=status,
                metrics=metrics,
                stderr={METRIC: 0.05},
                n_samples=n_samples,
                elapsed_s=1.0,
            )
        )
        common = dict(
            method=method,
            budget=budget,
            batch_size=1,
            device="cpu",
            dtype="float32",
            visual_tokens=budget,
            flops={"vision": 1.0e9, "prefill": prefill_flops},
            peak_memory_bytes={"cpu": 1_000_000 + 1000 * budget},
            kv_cache_bytes=512 * (budget + 20),
        )
        if controlled:
            records.append(ProfileRecord(kind="controlled", total_ms=total_ms, prefill_ms=total_ms / 2, **common))
        else:
            for jitter in (0.9, 1.0, 1.3):
                records.append(ProfileRecord(kind="request", task=TASK, total_ms=total_ms * jitter, **common))
    run.append_profile([*records, *extra_profile])
    return run.path


def run_cli(monkeypatch, argv: list[str]) -> int:
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in ("check", "baseline")})
    return cli.main(argv)


@pytest.fixture
def baseline(tmp_path) -> Path:
    return write_baseline(make_run(tmp_path, "run-base"), "cpu-test", tmp_path / "baselines")


def failing_keys(report: CheckReport) -> set[tuple[str, int, str]]:
    return {(f.cell.method, f.cell.budget, f.key) for f in report.failures}


# -- what is derived -----------------------------------------------------------------------------------------------
def test_derived_values_cover_every_category():
    values = derive_values(
        [CellResult(TASK, m, b, "ok", {METRIC: s}, n_samples=50) for (m, b), (s, _, _) in SWEEP.items()],
        [
            ProfileRecord(
                kind="controlled",
                method=m,
                budget=b,
                batch_size=1,
                device="cpu",
                dtype="float32",
                total_ms=t,
                flops={"prefill": f},
                peak_memory_bytes={"cpu": 10},
                kv_cache_bytes=20,
            )
            for (m, b), (_, t, f) in SWEEP.items()
        ],
    )
    cell = values[CellKey(TASK, "vistog", 64)]
    group = "[controlled,eager,bs1]"
    assert cell[f"accuracy/{METRIC}"] == 0.76
    assert cell[f"retention/{METRIC}"] == pytest.approx(0.76 / 0.80)
    assert cell[f"speedup/total_ms{group}"] == pytest.approx(100.0 / 40.0)
    assert cell[f"flops/prefill{group}"] == 0.6e9 and cell[f"flops/total{group}"] == 0.6e9
    assert cell[f"memory/peak_memory_bytes.cpu{group}"] == 10 and cell[f"memory/kv_cache_bytes{group}"] == 20
    assert cell[f"latency/total_ms{group}"] == 40.0
    assert cell["samples/n_samples"] == 50


def test_full_budget_is_none_at_largest_budget_else_the_largest_budget_for_every_method():
    assert full_budget([("none", 576), ("none", 288), ("vistog", 64)]) == FullBudget("none", 576, stand_in=False)
    # without `none` the run's largest budget stands in for every cell: tome@64 is never its own reference
    assert full_budget([("pool", 144), ("pool", 36), ("tome", 64)]) == FullBudget("pool", 144, stand_in=True)
    assert full_budget([]) is None


def test_request_records_give_median_speedup_when_no_controlled_records(tmp_path):
    run = RunDir(make_run(tmp_path, controlled=False))
    cell = derive_values(run.cells(), run.profile())[CellKey(TASK, "vistog", 64)]
    assert cell["speedup/total_ms[request]"] == pytest.approx(100.0 / 40.0)
    assert not any("controlled" in key for key in cell)


def test_controlled_records_are_preferred_over_requests(tmp_path):
    stray = ProfileRecord(
        kind="request",
        task=TASK,
        method="vistog",
        budget=64,
        batch_size=1,
        device="cpu",
        dtype="float32",
        total_ms=999.0,
    )
    run = RunDir(make_run(tmp_path, extra_profile=[stray]))
    cell = derive_values(run.cells(), run.profile())[CellKey(TASK, "vistog", 64)]
    assert "speedup/total_ms[request]" not in cell
    assert cell["speedup/total_ms[controlled,eager,bs1]"] == pytest.approx(2.5)


# -- verdicts ------------------------------------------------------------------------------------------------------
def test_unchanged_rerun_passes(tmp_path, baseline):
    report = check_run(make_run(tmp_path, "run-again"), baseline)
    assert report.exit_code == 0, report.to_table()
    assert report.failures == ()
    assert {f.key.split("/")[0] for f in report.findings} >= {
        "accuracy",
        "retention",
        "speedup",
        "flops",
        "memory",
        "samples",
    }
    assert not any(f.key.startswith("latency/") for f in report.findings), "absolute latency is off by default"


def test_timing_noise_within_tolerance_passes(tmp_path, baseline):
    noisy = {k: (s, t * (1.2 if k[0] == "vistog" else 1.0), f) for k, (s, t, f) in SWEEP.items()}
    assert check_run(make_run(tmp_path, "run-noisy", sweep=noisy), baseline).exit_code == 0


def test_accuracy_drop_beyond_tolerance_fails(tmp_path, baseline):
    worse = {**SWEEP, ("vistog", 64): (0.70, 40.0, 0.6e9)}
    report = check_run(make_run(tmp_path, "run-worse", sweep=worse), baseline)
    assert report.exit_code == 1
    assert ("vistog", 64, f"accuracy/{METRIC}") in failing_keys(report)
    assert ("vistog", 64, f"retention/{METRIC}") in failing_keys(report)
    finding = next(f for f in report.failures if f.key == f"accuracy/{METRIC}")
    assert (finding.baseline, finding.now) == (0.76, 0.70) and finding.delta == pytest.approx(-0.06)


def test_accuracy_drop_within_tolerance_passes_and_a_gain_is_marked(tmp_path, baseline):
    changed = {**SWEEP, ("vistog", 64): (0.75, 40.0, 0.6e9), ("vistog", 16): (0.80, 30.0, 0.2e9)}
    report = check_run(make_run(tmp_path, "run-changed", sweep=changed), baseline)
    assert report.exit_code == 0
    gain = next(f for f in report.findings if f.cell.budget == 16 and f.key == f"accuracy/{METRIC}")
    assert gain.verdict == "improved"


def test_doctored_speedup_fails(tmp_path, baseline):
    slower = {**SWEEP, ("vistog", 64): (0.76, 80.0, 0.6e9)}
    report = check_run(make_run(tmp_path, "run-slower", sweep=slower), baseline)
    assert report.exit_code == 1
    assert failing_keys(report) == {("vistog", 64, "speedup/total_ms[controlled,eager,bs1]")}


def test_flops_must_match_exactly(tmp_path, baseline):
    more = {**SWEEP, ("vistog", 16): (0.70, 30.0, 0.2e9 + 1e6)}
    report = check_run(make_run(tmp_path, "run-flops", sweep=more), baseline)
    assert ("vistog", 16, "flops/prefill[controlled,eager,bs1]") in failing_keys(report)


def test_missing_cell_fails_and_is_listed(tmp_path, baseline):
    report = check_run(make_run(tmp_path, "run-short", drop_cells={("vistog", 16)}), baseline)
    assert report.exit_code == 1
    assert failing_keys(report) == {("vistog", 16, "cell")}
    assert report.failures[0].verdict == "missing"


def test_missing_value_fails(tmp_path, baseline):
    run = make_run(tmp_path, "run-no-profile")
    (run / "profile.jsonl").unlink()
    report = check_run(run, baseline)
    assert report.exit_code == 1
    assert ("vistog", 64, "speedup/total_ms[controlled,eager,bs1]") in failing_keys(report)
    assert all(f.verdict == "missing" for f in report.failures)


def test_failed_cell_fails(tmp_path, baseline):
    report = check_run(make_run(tmp_path, "run-oom", statuses={("vistog", 64): "oom"}), baseline)
    assert failing_keys(report) == {("vistog", 64, "status")}


def test_new_cell_is_listed_not_failed(tmp_path, baseline):
    wider = {**SWEEP, ("pool", 64): (0.6, 35.0, 0.6e9)}
    report = check_run(make_run(tmp_path, "run-wider", sweep=wider), baseline)
    assert report.exit_code == 0
    assert any(f.verdict == "new" and f.cell.method == "pool" for f in report.findings)


def test_per_metric_override_loosens_one_metric(tmp_path, baseline):
    overlay = tmp_path / "loose.json"
    overlay.write_text(json.dumps({"overrides": [{"match": f"*/{METRIC}", "task": "shapes_*", "allowed": 0.1}]}))
    worse = {**SWEEP, ("vistog", 64): (0.70, 40.0, 0.6e9)}
    assert check_run(make_run(tmp_path, "run-worse", sweep=worse), baseline, overlay).exit_code == 0
    assert load_tolerances(overlay).defaults["accuracy"].allowed == 0.02


# -- CLI, files, exit codes ----------------------------------------------------------------------------------------
def test_baseline_update_writes_a_file_that_check_accepts(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "run-cli")
    out_dir = tmp_path / "baselines"
    assert (
        run_cli(monkeypatch, ["baseline", "update", str(run), "--name", "cpu-default", "--out-dir", str(out_dir)]) == 0
    )
    written = out_dir / "cpu-default.json"
    data = json.loads(written.read_text())
    assert data["manifest"]["run_id"] == "run-cli" and len(data["cells"]) == 3
    assert data["cells"][0]["metrics"][METRIC] == 0.80
    summary, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    code = run_cli(
        monkeypatch, ["check", str(run), "--baseline", str(written), "--summary", str(summary), "--junit", str(junit)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "OK:" in out and f"accuracy/{METRIC}" in out
    assert summary.read_text().startswith("## vistog-bench check: pass")
    assert ElementTree.parse(junit).getroot().get("failures") == "0"


def test_junit_xml_parses_and_lists_failures(tmp_path, monkeypatch, baseline):
    worse = {**SWEEP, ("vistog", 64): (0.70, 80.0, 0.6e9)}
    junit, summary = tmp_path / "out" / "junit.xml", tmp_path / "out" / "summary.md"
    code = run_cli(
        monkeypatch,
        [
            "check",
            str(make_run(tmp_path, "run-worse", sweep=worse)),
            "--baseline",
            str(baseline),
            "--junit",
            str(junit),
            "--summary",
            str(summary),
            "--quiet",
        ],
    )
    assert code == 1
    root = ElementTree.parse(junit).getroot()
    failed = {
        (case.get("classname"), case.get("name")) for case in root.iter("testcase") if case.find("failure") is not None
    }
    slug = f"vistog_bench.check.{TASK}__vistog__64"
    assert failed == {
        (slug, f"accuracy/{METRIC}"),
        (slug, f"retention/{METRIC}"),
        (slug, "speedup/total_ms[controlled,eager,bs1]"),
    }
    assert root.get("failures") == "3" and int(root.get("tests")) == len(list(root.iter("testcase")))
    failure = next(root.iter("failure"))
    assert "baseline" in failure.get("message") and "now" in failure.get("message")
    text = summary.read_text()
    assert "### Failures" in text and "speedup/total_ms" in text


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"format": "something-else/9", "cells": []}),
        json.dumps({"format": "vistog-bench-baseline/1", "cells": [{"task": "t", "method": "none", "budget": 576}]}),
        json.dumps(
            {
                "format": "vistog-bench-baseline/1",
                "cells": [
                    {"task": "t", "method": "none", "budget": 576, "status": "ok", "values": {"accuracy/x": "high"}}
                ],
            }
        ),
        json.dumps(
            {
                "format": "vistog-bench-baseline/1",
                "cells": [{"task": "t", "method": "none", "budget": 576, "status": "ok", "values": {"vibes/x": 1.0}}],
            }
        ),
    ],
)
def test_malformed_baseline_exits_2(tmp_path, monkeypatch, capsys, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert run_cli(monkeypatch, ["check", str(make_run(tmp_path)), "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "baseline" in err


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        json.dumps({"defaults": {"accuracy": {"mode": "percent"}}}),
        json.dumps({"defaults": {"accuracy": {"allowed": -1}}}),
        json.dumps({"defaults": {"vibes": {"mode": "abs", "allowed": 1, "better": "higher"}}}),
        json.dumps({"overrides": [{"allowed": 1}]}),
    ],
)
def test_malformed_tolerances_exit_2(tmp_path, monkeypatch, baseline, content):
    bad = tmp_path / "tol.json"
    bad.write_text(content)
    argv = ["check", str(make_run(tmp_path, "run-x")), "--baseline", str(baseline), "--tolerances", str(bad)]
    assert run_cli(monkeypatch, argv) == 2


def test_missing_inputs_exit_2(tmp_path, monkeypatch, baseline):
    assert run_cli(monkeypatch, ["check", str(tmp_path / "nope"), "--baseline", str(baseline)]) == 2
    assert run_cli(monkeypatch, ["check", str(make_run(tmp_path)), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert run_cli(monkeypatch, ["baseline", "update", str(make_run(tmp_path)), "--name", "../escape"]) == 2


def test_shipped_tolerance_files_load():
    defaults = load_tolerances()
    assert defaults.defaults["latency"].enabled is False
    gpu = load_tolerances(Path(__file__).parents[1] / "vistog_bench" / "regress_tolerances_gpu.json")
    assert (
        gpu.defaults["latency"].enabled is True
        and gpu.defaults["speedup"].allowed < defaults.defaults["speedup"].allowed
    )


def test_baseline_round_trip_keeps_every_value(tmp_path):
    run = make_run(tmp_path)
    data = build_baseline(run, "round-trip")
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    loaded = load_baseline(path)
    assert {c.key: c.values for c in loaded.cells} == derive_values(RunDir(run).cells(), RunDir(run).profile())
    with pytest.raises(UsageError):
        build_baseline(tmp_path / "missing-run", "x")
