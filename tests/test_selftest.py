"""`vistog-bench selftest`: the CPU run of every measuring path (in the suite: it takes seconds), and the GPU plan and
checks, unit-checked on CPU (no GPU here: the GPU run itself is documented as not yet executed)."""

from __future__ import annotations

import dataclasses
import json
import re

from vistog_bench.cli import main as cli_main
from vistog_bench.results import ProfileRecord
from vistog_bench.selftest import (
    CHECKS,
    PathResult,
    check_controlled,
    clock_disagreements,
    markdown_table,
    plan_for,
    selftest,
)


def test_cpu_selftest_runs_every_path_and_writes_json_and_markdown(tmp_path):
    assert cli_main(["selftest", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "selftest-cpu.json").read_text())
    paths = {row["path"]: row for row in report["paths"]}
    assert all(row["ok"] for row in paths.values()), [r["problems"] for r in paths.values() if not r["ok"]]
    assert {"device", "analytic", "sweep (lmms-eval, vistog adapter)"} <= paths.keys()
    controlled = [row for name, row in paths.items() if name.startswith("controlled/eager")]
    assert len(controlled) == 4  # budgets 576, 64 x batch 1, 2
    for row in controlled:
        assert row["figures"]["ttft_p50_ms"] > 0 and row["figures"]["ttft_logits_processor_p50_ms"] > 0
        assert row["figures"]["counted_flops_total"] > 0 and row["figures"]["energy_j"] is None
    assert paths["device"]["figures"]["torch_threads"] == 1
    assert re.search(
        r"\| controlled/eager budget 64 batch 2 +\| (ok|noisy) ", (tmp_path / "selftest-cpu.md").read_text()
    )


def test_a_broken_path_is_a_failed_row_named_and_the_others_still_run():
    plan = dataclasses.replace(plan_for("cpu"), shape="no-such-preset")
    rows = {row.path: row for row in selftest(plan)}
    assert not rows["controlled/eager"].ok and "unknown shape" in rows["controlled/eager"].problems[0]
    assert rows["device"].ok


def test_gpu_plan_is_the_7b_shape_with_the_papers_budgets_both_paths():
    plan = plan_for("cuda")
    assert (plan.shape, plan.dtype, plan.budgets, plan.batch_sizes) == (
        "llava-1.5-7b",
        "bfloat16",
        (576, 192, 128, 64),
        (1, 8),
    )
    assert plan.paths == ("eager", "compiled") and plan.warmup >= 2  # compiling takes the first runs


def test_the_gpu_plan_lists_every_gpu_check_with_its_verdict_rule(capsys):
    """What a first GPU run must check: each is a check of the GPU plan with what it prints and its rule, and
    `--plan` prints them without a GPU."""
    plan = plan_for("cuda")
    wanted = {
        "nvml-identity",  # UUID / PCI equal, under a mask, on cuda:1
        "launch/2-process",  # one device per process
        "controlled/compiled",  # a graph ran, faster than eager
        "controlled/float16",
        "methods/bfloat16",  # every method, syncs under a ceiling, attention kernels, a repeat identical
        "methods/float16",
        "train/1-process",
        "train/1-process-fp16",
        "train/ddp",
        "train/fsdp2",
    }
    assert wanted <= set(plan.checks) and not wanted & set(plan_for("cpu").checks)
    assert all(CHECKS[name].prints and CHECKS[name].verdict for name in plan.checks)
    assert "energy at a mean power" in CHECKS["controlled/eager"].verdict
    assert cli_main(["selftest", "--device", "cuda", "--plan"]) == 0
    printed = capsys.readouterr().out
    assert all(f"| {name} " in printed for name in plan.checks)


def _record(**changes) -> ProfileRecord:
    stats = {
        "host_total": {"p50": 20.0},
        "host_total_gap": {"p50": 0.1},
        "ttft_logits_processor": {"p50": 10.2},
        "ttft_logits_processor_gap": {"p50": 0.2},
        "total": {"cv": 0.01},
        "ttft": {"cv": 0.01},
    }
    base = ProfileRecord(
        kind="controlled",
        method="vistog",
        budget=64,
        batch_size=1,
        device="cuda:0",
        dtype="bfloat16",
        vision_ms=2.0,
        grouping_ms=0.5,
        projector_ms=0.2,
        prefill_ms=6.0,
        ttft_ms=10.0,
        total_ms=20.0,
        stats=stats,
        kv_cache_bytes=100,
        energy_j=1.5,
        peak_rss_bytes=1,
        peak_memory_bytes={"vision": 1, "prefill": 2, "total": 2},
        extra={"kv_cache_bytes_measured": 100, "kv_cache_bytes_computed": 100, "flops_mismatch": {}},
    )
    return dataclasses.replace(base, **changes)


def test_gpu_checks_demand_energy_per_stage_memory_and_agreeing_clocks():
    assert check_controlled(_record(), cuda=True) == []
    assert "no energy" in check_controlled(_record(energy_j=None), cuda=True)[0]
    assert "peak memory" in check_controlled(_record(peak_memory_bytes={}), cuda=True)[0]
    late = _record(stats={**_record().stats, "ttft_logits_processor_gap": {"p50": 20.0}})
    assert "first-token clock" in check_controlled(late, cuda=True)[0]
    slow_host = _record(stats={**_record().stats, "host_total_gap": {"p50": 20.0}})
    assert "host clock" in check_controlled(slow_host, cuda=True)[0]
    unread = _record(stats={k: v for k, v in _record().stats.items() if k != "host_total_gap"})
    assert "host clock: no per-request reading" in check_controlled(unread, cuda=True)[0]


def test_clocks_that_disagree_on_a_busy_machine_are_noise_not_a_failure():
    """The medians of two noisy clocks can cross (CV 35 % measured under load); the per-request gap decides, and a
    disagreement on a stage that spread more than NOISY_CV is reported as noise while the row stays ok."""
    busy = _record(stats={**_record().stats, "ttft_logits_processor_gap": {"p50": 20.0}, "ttft": {"cv": 0.35}})
    assert check_controlled(busy, cuda=True) == []
    problems, noise = clock_disagreements(busy)
    assert problems == [] and "first-token clock" in noise[0] and "CV 35%" in noise[0]
    row = PathResult("controlled/eager budget 64 batch 1", True, [], {}, noise)
    assert row.verdict == "noisy" and "| noisy " in markdown_table(plan_for("cpu"), [row])
    quiet = _record(stats={**_record().stats, "ttft_logits_processor_gap": {"p50": 20.0}})
    assert clock_disagreements(quiet)[1] == [] and PathResult("x", False, ["p"]).verdict == "FAILED"
    assert check_controlled(_record(energy_j=None, peak_memory_bytes={}), cuda=False) == []  # a CPU has neither
