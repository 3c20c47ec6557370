"""`vistog-bench selftest`: every measuring path of the harness, exercised on the machine it runs on.

    vistog-bench selftest                      # CPU: the tiny preset, well under a minute (the test suite runs it)
    vistog-bench selftest --device cuda        # one GPU, a few minutes, no weights: LLaVA-1.5-7B shape, random bf16

Paths checked, each a row of the table (a failed path is named on stderr and the exit code is 1):
  controlled/<path>   `profile`'s controlled measurement: stage times (CUDA events on a GPU), the host clock
                      beside them, the logits-processor first-token clock beside the hook TTFT, per-stage peak
                      memory (CUDA allocator) or peak RSS, KV-cache bytes (measured and computed), NVML energy
                      (a GPU must give joules; a CPU gives none, with its reason), counted vs analytic FLOPs,
                      and on a GPU of the roofline table the measured / floor ratio of TTFT.
                      Paths: eager, and on CUDA `compiled` (static cache + torch.compile decode).
  analytic            `profile --analytic`: FLOPs, bytes and roofline floors from the config alone.
  sweep               a short lmms-eval sweep through the `vistog` adapter on the embedded synthetic task
                      (shapes_vqa) with per-request profiling: every cell ok, every request profiled.
  device              the device facts a manifest records: GPU name, driver, clocks (NVML), threads on CPU.

Writes `<output>/selftest-<device>.json` (every figure) and `.md` (the table). The GPU settings are those of the
issue that asked for this command: budgets 576/192/128/64, batch 1 and 8, eager and compiled; the CPU settings are
the same code paths at sizes that make it quick (their numbers check the paths, they are not measurements).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

# Two clocks on one request agree when the median of their per-request gaps is at most this fraction of the stage
# (or FIRST_TOKEN_SLACK_MS for the first token, whose two clocks sit a sampling step apart).
CLOCK_TOLERANCE = 0.2
FIRST_TOKEN_SLACK_MS = 1.0
# A stage whose repeats spread more than this (coefficient of variation) was measured on a busy machine: clocks that
# disagree there make the row "noisy", not failed; a quiet machine (CV 1-2 % measured on CPU) still fails them.
NOISY_CV = 0.1


@dataclass(frozen=True)
class SelftestPlan:
    """What one selftest measures (see `plan_for`)."""

    device: str
    shape: str
    dtype: str
    budgets: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    new_tokens: int
    paths: tuple[str, ...]  # "eager", and "compiled" on CUDA
    warmup: int
    repeats: int
    sweep_limit: int


def plan_for(device: str) -> SelftestPlan:
    """The GPU plan (LLaVA-1.5-7B shape, bf16, the paper's budgets, batch 1 and 8, eager and compiled) or the CPU
    plan (the tiny preset, two budgets, eager only: compiling needs CUDA)."""
    if device.startswith("cuda"):
        return SelftestPlan(
            device,
            "llava-1.5-7b",
            "bfloat16",
            (576, 192, 128, 64),
            (1, 8),
            16,
            ("eager", "compiled"),
            warmup=3,
            repeats=10,
            sweep_limit=8,
        )
    return SelftestPlan(device, "tiny", "float32", (576, 64), (1, 2), 4, ("eager",), warmup=1, repeats=3, sweep_limit=4)


@dataclass
class PathResult:
    """One row: a measuring path (and cell), whether it works, why not, and its figures."""

    path: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    noise: list[str] = field(default_factory=list)  # findings the machine's noise explains; the row stays ok

    @property
    def verdict(self) -> str:
        return "FAILED" if not self.ok else "noisy" if self.noise else "ok"


# (second clock, the stage it cross-checks, what the disagreement is called, slack in ms)
_CLOCK_CHECKS = (
    ("host_total", "total", "host clock", 0.0),
    ("ttft_logits_processor", "ttft", "first-token clock", FIRST_TOKEN_SLACK_MS),
)


def clock_disagreements(record) -> tuple[list[str], list[str]]:
    """(problems, noise) of the second clocks: the median per-request gap between a second clock and its stage against
    CLOCK_TOLERANCE; a disagreement on a stage that spread more than NOISY_CV is noise."""
    problems, noise = [], []
    for clock, stage, label, slack_ms in _CLOCK_CHECKS:
        stage_ms = getattr(record, f"{stage}_ms")
        gap = record.stats.get(f"{clock}_gap", {}).get("p50")
        second = record.stats.get(clock, {}).get("p50")
        if gap is None or stage_ms is None:
            problems.append(f"{label}: no per-request reading beside {stage}_ms")
            continue
        if gap <= max(slack_ms, CLOCK_TOLERANCE * stage_ms):
            continue
        spread = record.stats.get(stage, {}).get("cv", 0.0)
        finding = f"{label} {second} ms vs {stage} {stage_ms} ms (median gap per request {gap:.3g} ms)"
        if spread > NOISY_CV:
            noise.append(f"{finding}; {stage} spread CV {spread:.0%} > {NOISY_CV:.0%}: busy machine, rerun when idle")
        else:
            problems.append(finding)
    return problems, noise


def check_controlled(record, cuda: bool) -> list[str]:
    """What a controlled record must hold for its paths to count as working (empty: all do); clock disagreements that
    the machine's noise explains are not among them (clock_disagreements)."""
    problems = clock_disagreements(record)[0]
    for stage in ("vision", "projector", "prefill", "ttft", "total"):
        value = getattr(record, f"{stage}_ms")
        if value is None or not value > 0:
            problems.append(f"{stage}_ms is {value}")
    if record.method == "vistog" and record.grouping_ms is None:
        problems.append("no grouping time with VisToG on")
    if record.extra.get("flops_mismatch"):
        problems.append(f"counted vs analytic FLOPs differ: {record.extra['flops_mismatch']}")
    measured, computed = record.extra.get("kv_cache_bytes_measured"), record.extra.get("kv_cache_bytes_computed")
    if not computed or measured is None or measured < computed:
        problems.append(f"KV cache: measured {measured} bytes, computed {computed}")
    if cuda:
        if not {"vision", "prefill", "total"} <= record.peak_memory_bytes.keys():
            problems.append(f"per-stage peak memory missing: {sorted(record.peak_memory_bytes)}")
        if record.energy_j is None:
            problems.append(f"no energy: {record.null_reasons.get('energy_j')}")
    elif not record.peak_rss_bytes:
        problems.append("no peak RSS")
    return problems


def _controlled_figures(record) -> dict[str, Any]:
    ttft = record.stats.get("ttft", {})
    figures = {
        "ttft_p50_ms": ttft.get("p50"),
        "ttft_p99_ms": ttft.get("p99"),
        "ttft_cv": ttft.get("cv"),
        "ttft_logits_processor_p50_ms": record.stats.get("ttft_logits_processor", {}).get("p50"),
        "host_total_p50_ms": record.stats.get("host_total", {}).get("p50"),
        "total_ms": record.total_ms,
        "decode_per_token_ms": record.decode_per_token_ms,
        "peak_memory_bytes": record.peak_memory_bytes,
        "peak_rss_bytes": record.peak_rss_bytes,
        "kv_cache_bytes": record.kv_cache_bytes,
        "energy_j": record.energy_j,
        "flops_total": record.flops.get("total"),
        "counted_flops_total": record.counted_flops.get("total"),
    }
    for gpu, floors in record.extra.get("roofline", {}).items():
        floor_ms = sum(floors[s]["floor_ms"] for s in ("vision", "grouping", "projector", "prefill"))
        figures[f"ttft_floor_ms_{gpu}"] = floor_ms
        figures[f"ttft_over_floor_{gpu}"] = record.ttft_ms / floor_ms if floor_ms else None
    return figures


def run_controlled(plan: SelftestPlan, execution_path: str) -> list[PathResult]:
    from .profiling.controlled import ProfileSettings, measured_records
    from .profiling.timers import default_threads

    settings = ProfileSettings(
        model_path=None,
        shape=plan.shape,
        budgets=plan.budgets,
        batch_sizes=plan.batch_sizes,
        new_tokens=(plan.new_tokens,),
        warmup=plan.warmup,
        repeats=plan.repeats,
        min_duration_s=0.0,
        device=plan.device,
        dtype=plan.dtype,
        compile=execution_path == "compiled",
        count_flops=True,
        gpus=(),
        threads=default_threads(plan.device),
    )
    results = []
    for record in measured_records(settings):
        name = f"controlled/{execution_path} budget {record.budget} batch {record.batch_size}"
        problems = check_controlled(record, plan.device.startswith("cuda"))
        noise = clock_disagreements(record)[1]
        results.append(PathResult(name, not problems, problems, _controlled_figures(record), noise))
    return results


def run_analytic(plan: SelftestPlan) -> list[PathResult]:
    from .profiling.controlled import ProfileSettings, analytic_records

    settings = ProfileSettings(
        model_path=None,
        shape=plan.shape,
        budgets=plan.budgets,
        batch_sizes=plan.batch_sizes,
        new_tokens=(plan.new_tokens,),
        dtype="bfloat16",
        gpus=("h100-sxm", "h200"),
    )
    records = analytic_records(settings)
    problems = [f"budget {r.budget}: no floors" for r in records if not r.extra.get("roofline")]
    figures = {f"prefill_flops_budget_{r.budget}_batch_{r.batch_size}": r.flops["prefill"] for r in records}
    return [PathResult("analytic", not problems, problems, figures)]


def run_sweep_path(plan: SelftestPlan) -> list[PathResult]:
    from . import demo
    from .runner import RunConfig, embedded_default, run_sweep

    budgets = (demo.FULL_BUDGET, min(demo.available_budgets()))
    models, tasks, budgets, methods = embedded_default(("shapes_vqa",), budgets, ("vistog",))
    with tempfile.TemporaryDirectory(prefix="vistog-selftest-") as folder:
        config = RunConfig(
            models=tuple(str(m) for m in models),
            tasks=tasks,
            methods=methods,
            budgets=budgets,
            limit=plan.sweep_limit,
            device=plan.device,
            output=folder,
            dtype="float16" if plan.device.startswith("cuda") else "float32",
            threads=1 if plan.device == "cpu" else None,
        )
        started = time.perf_counter()
        run, cells = run_sweep(config, command=["vistog-bench", "selftest"])
        elapsed = time.perf_counter() - started
        records = run.profile()
    problems = [f"{c.task} {c.method}@{c.budget}: {c.status}" for c in cells if not c.ok]
    served = sum(c.n_samples for c in cells)
    if len(records) < len(cells) or any(r.total_ms is None for r in records):
        problems.append(f"{len(records)} profile records for {len(cells)} cells")
    figures = {
        "cells": len(cells),
        "samples": served,
        "profile_records": len(records),
        "seconds": elapsed,
        "samples_per_s": served / elapsed if elapsed else None,
    }
    return [PathResult("sweep (lmms-eval, vistog adapter)", not problems, problems, figures)]


def run_device(plan: SelftestPlan) -> list[PathResult]:
    import torch

    from .profiling import device_facts

    facts = device_facts(plan.device)
    problems = []
    if plan.device.startswith("cuda"):
        problems = [
            f"no {key} from NVML" for key in ("name", "driver_version", "sm_clock_mhz") if facts.get(key) is None
        ]
        if facts.get("sm_clock_mhz") is not None and facts.get("max_sm_clock_mhz"):
            # NVML reports no lock state: an idle SM clock at its maximum is what a lock looks like
            facts["sm_clock_at_max_when_idle"] = facts["sm_clock_mhz"] == facts["max_sm_clock_mhz"]
    facts["torch_threads"] = torch.get_num_threads()
    return [PathResult("device", not problems, problems, facts)]


def selftest(plan: SelftestPlan) -> list[PathResult]:
    """Every path in turn; a path that raises becomes a failed row with the error, and the next path still runs."""
    steps: list[tuple[str, Callable[[], list[PathResult]]]] = [("device", lambda: run_device(plan))]
    steps += [(f"controlled/{p}", lambda p=p: run_controlled(plan, p)) for p in plan.paths]
    steps += [("analytic", lambda: run_analytic(plan)), ("sweep", lambda: run_sweep_path(plan))]
    results = []
    for name, step in steps:
        started = time.perf_counter()
        try:
            rows = step()
        except Exception as exc:  # noqa: BLE001 - a broken path is this command's finding, named in its row
            rows = [PathResult(name, False, [f"{type(exc).__name__}: {exc}"])]
        for row in rows:
            row.figures.setdefault("step_seconds", round(time.perf_counter() - started, 3))
        results += rows
    return results


def markdown_table(plan: SelftestPlan, results: list[PathResult]) -> str:
    from tabulate import tabulate

    def short(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    keys = (
        "ttft_p50_ms",
        "ttft_logits_processor_p50_ms",
        "host_total_p50_ms",
        "total_ms",
        "ttft_cv",
        "energy_j",
        "kv_cache_bytes",
        "samples_per_s",
        "name",
        "driver_version",
        "sm_clock_mhz",
        "torch_threads",
    )
    rows = []
    for r in results:
        over = {k: v for k, v in r.figures.items() if k.startswith("ttft_over_floor_")}
        shown = {k: r.figures[k] for k in keys if r.figures.get(k) is not None} | over
        rows.append(
            [
                r.path,
                r.verdict,
                "; ".join(r.problems + r.noise) or "-",
                ", ".join(f"{k}={short(v)}" for k, v in shown.items()) or "-",
            ]
        )
    title = f"# vistog-bench selftest: {plan.device}, {plan.shape}, {plan.dtype}\n\n"
    return title + tabulate(rows, headers=["path", "status", "problems", "figures"], tablefmt="github") + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (tiny preset, < 1 min) or cuda / cuda:N (7B shape)")
    parser.add_argument("--output", default="results", help="folder for selftest-<device>.json and .md")


def main(args: argparse.Namespace) -> int:
    import torch

    from .results import check_writable_dir, write_json

    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    check_writable_dir(args.output, "--output")
    plan = plan_for(args.device)
    results = selftest(plan)
    stem = Path(args.output) / f"selftest-{args.device.replace(':', '')}"
    write_json(
        stem.with_suffix(".json"), {"plan": dataclasses.asdict(plan), "paths": [dataclasses.asdict(r) for r in results]}
    )
    table = markdown_table(plan, results)
    stem.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    failed = [r for r in results if not r.ok]
    for row in failed:
        print(f"vistog-bench selftest: {row.path} FAILED: {'; '.join(row.problems)}", file=sys.stderr)
    for row in results:
        if row.ok and row.noise:
            print(f"vistog-bench selftest: {row.path} noisy: {'; '.join(row.noise)}", file=sys.stderr)
    print(f"selftest: {stem.with_suffix('.json')}, {stem.with_suffix('.md')}", file=sys.stderr)
    return 1 if failed else 0


__all__ = [
    "SelftestPlan",
    "PathResult",
    "plan_for",
    "selftest",
    "check_controlled",
    "clock_disagreements",
    "markdown_table",
    "add_arguments",
    "main",
]
