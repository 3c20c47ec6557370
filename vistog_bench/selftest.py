"""`vistog-bench selftest`: every measuring path of the harness, exercised on the machine it runs on.

    vistog-bench selftest                      # CPU: the tiny preset, well under a minute (the test suite runs it)
    vistog-bench selftest --device cuda        # one GPU, a few minutes, no weights: LLaVA-1.5-7B shape, random bf16

Checks, each one or more rows of the table with its figures and a verdict (ok, noisy, skipped with its reason, or
FAILED: named on stderr, exit code 1). `CHECKS` holds every check with what it prints and its verdict rule;
`vistog-bench selftest --device cuda --plan` lists a device's checks without running them:
  device              the device facts a manifest records: GPU name, driver, clocks (NVML), threads on CPU.
  nvml-identity       (GPU) the NVML handle is the GPU torch means: UUID / PCI address equal, on cuda:0, on cuda:1
                      when present, and in a process masked to one GPU (CUDA_VISIBLE_DEVICES).
  controlled/<path>   `profile`'s controlled measurement: stage times (CUDA events on a GPU), the host clock
                      beside them, the logits-processor first-token clock beside the hook TTFT, per-stage peak
                      memory (CUDA allocator) or peak RSS, KV-cache bytes (measured and computed), NVML energy
                      (a GPU must give joules, at a power between idle and its limit; a CPU gives none, with its
                      reason), stage peaks holding the weights, counted vs analytic FLOPs, and on a GPU of the
                      roofline table the measured / floor ratio of TTFT. Paths: eager; on CUDA `compiled` (static
                      cache + torch.compile decode: a graph must have run, faster than eager) and eager in float16.
  methods/<dtype>     every method at one budget (bf16 and fp16 on a GPU): the forced tokens with finite logits, a
                      repeat giving identical tokens, host syncs per request under a ceiling whatever the budget,
                      and the attention kernels that ran.
  launch/2-process    (2 GPUs) two processes of a launch serve the adapter on two devices.
  train/<config>      (GPU) two optimizer steps of `vistog-bench train` on the embedded tiny model: one process in
                      bf16 and in fp16, DDP and FSDP2 over two processes when two GPUs exist.
  analytic            `profile --analytic`: FLOPs, bytes and roofline floors from the config alone.
  sweep               a short lmms-eval sweep through the `vistog` adapter on the embedded synthetic task
                      (shapes_vqa) with per-request profiling: every cell ok, every request profiled.

Writes `<output>/selftest-<device>.json` (every figure) and `.md` (the table, then the plan). The GPU settings are
those of the issue that asked for this command: budgets 576/192/128/64, batch 1 and 8, eager and compiled; the CPU
settings are the same code paths at sizes that make it quick (their numbers check the paths, they are not
measurements).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
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
# Host syncs a training-free method may add to one request, per sample, beyond the stock model's, whatever its budget:
# the selections read the host a constant number of times per sample (the shared in-LLM pruner's positions, CDPruner's
# step count per image, HoliTom's windows, minima and merges: 23 at most on the CPU plan, batch 1); a loop over kept
# tokens pays K of them (the plans' budgets: 192, 300).
SYNCS_PER_SAMPLE = 32
# Mean power over the measured requests: at least IDLE_FRACTION of the idle reading (the card did work) and at most
# the enforced limit plus LIMIT_SLACK (NVML's power and energy counters are sampled, not exact).
IDLE_FRACTION, LIMIT_SLACK = 0.9, 0.1


@dataclass(frozen=True)
class SelftestPlan:
    """What one selftest measures (see `plan_for`)."""

    device: str
    shape: str
    dtype: str
    budgets: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    new_tokens: int
    checks: tuple[str, ...]  # names in CHECKS, in the order they run
    warmup: int
    repeats: int
    sweep_limit: int
    method_budget: int = 64  # every method at this budget (methods/<dtype>)
    method_batch: int = 2

    @property
    def paths(self) -> tuple[str, ...]:
        """The controlled execution paths measured in the plan's own dtype ("eager", "compiled")."""
        return tuple(c.split("/")[1] for c in self.checks if c in ("controlled/eager", "controlled/compiled"))


def plan_for(device: str) -> SelftestPlan:
    """The GPU plan (LLaVA-1.5-7B shape, bf16, the paper's budgets, batch 1 and 8, eager and compiled, every GPU
    check) or the CPU plan (the tiny preset, two budgets, eager only: compiling needs CUDA; the checks a CPU can do)."""
    if device.startswith("cuda"):
        return SelftestPlan(
            device,
            "llava-1.5-7b",
            "bfloat16",
            (576, 192, 128, 64),
            (1, 8),
            16,
            tuple(name for name, check in CHECKS.items() if "cuda" in check.devices),
            warmup=3,
            repeats=10,
            sweep_limit=8,
            method_budget=192,  # reachable by every layer-mean method at its paper layers on 32 layers
        )
    return SelftestPlan(
        device,
        "tiny",
        "float32",
        (576, 64),
        (1, 2),
        4,
        tuple(name for name, check in CHECKS.items() if "cpu" in check.devices),
        warmup=1,
        repeats=3,
        sweep_limit=4,
        method_budget=300,  # the tiny LLM has 2 layers: a layer-mean method keeps all 576 in layer 0
        method_batch=1,
    )


@dataclass
class PathResult:
    """One row: a measuring path (and cell), whether it works, why not, and its figures."""

    path: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    noise: list[str] = field(default_factory=list)  # findings the machine's noise explains; the row stays ok
    skipped: str | None = None  # why this machine cannot run the check (fewer GPUs, a library absent); ok stays True

    @property
    def verdict(self) -> str:
        return "FAILED" if not self.ok else "skipped" if self.skipped else "noisy" if self.noise else "ok"


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
        elif record.weight_bytes and record.peak_memory_bytes["prefill"] < record.weight_bytes:
            problems.append(
                f"prefill peak {record.peak_memory_bytes['prefill']} bytes is below the weights' "
                f"{record.weight_bytes}: the allocator's peak missed what was resident"
            )
        if record.energy_j is None:
            problems.append(f"no energy: {record.null_reasons.get('energy_j')}")
    elif not record.peak_rss_bytes:
        problems.append("no peak RSS")
    if "compile" in record.extra and not record.extra["compile"]["ran"]:
        problems.append(f"no compiled graph ran: {record.extra['compile'].get('why_not')}")
    return problems


def mean_power_w(record) -> float | None:
    """A request's mean power: its energy over its total time (None without an energy reading)."""
    return record.energy_j / (record.total_ms / 1e3) if record.energy_j is not None and record.total_ms else None


def check_power(record, idle_w: float | None, limit_w: float | None) -> list[str]:
    """The request's mean power between the idle reading and the enforced limit."""
    watts = mean_power_w(record)
    if watts is None:
        return []  # check_controlled names a missing energy reading
    if idle_w is not None and watts < IDLE_FRACTION * idle_w:
        return [f"mean power {watts:.1f} W is below the idle {idle_w:.1f} W: the energy counter is not this GPU's"]
    if limit_w is not None and watts > (1 + LIMIT_SLACK) * limit_w:
        return [f"mean power {watts:.1f} W is above the {limit_w:.1f} W limit: the energy counter is not this GPU's"]
    return []


def check_compiled_speed(compiled, eager) -> list[str]:
    """A compiled cell decodes faster per token than the eager cell of the same budget and batch size."""
    if compiled.decode_per_token_ms is None or eager is None or eager.decode_per_token_ms is None:
        return []
    if compiled.decode_per_token_ms >= eager.decode_per_token_ms:
        return [
            f"compiled decode {compiled.decode_per_token_ms:.3g} ms/token is not below eager's "
            f"{eager.decode_per_token_ms:.3g}"
        ]
    return []


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
        "weight_bytes": record.weight_bytes,
        "execution_path": record.execution_path,
        "power_w": mean_power_w(record),
    }
    if "compile" in record.extra:
        figures["compile"] = record.extra["compile"]
    for gpu, floors in record.extra.get("roofline", {}).items():
        floor_ms = sum(floors[s]["floor_ms"] for s in ("vision", "grouping", "projector", "prefill"))
        figures[f"ttft_floor_ms_{gpu}"] = floor_ms
        figures[f"ttft_over_floor_{gpu}"] = record.ttft_ms / floor_ms if floor_ms else None
    return figures


def run_controlled(plan: SelftestPlan, variant: str, done: dict[str, Any] | None = None) -> list[PathResult]:
    """Rows of `controlled/<variant>`: "eager" / "compiled" in the plan's dtype, or a dtype name (eager in it, the
    budgets' two ends at batch 1). `done` keeps each variant's records (a compiled cell is compared with eager's)."""
    from .profiling.controlled import ProfileSettings, measured_records
    from .profiling.timers import default_threads

    cuda = plan.device.startswith("cuda")
    by_dtype = variant not in ("eager", "compiled")
    # the card's idle power: the device check's reading, taken before any work (a reading after a check's load runs
    # high for seconds); its enforced limit
    idle = (done or {}).get("device") or {}
    settings = ProfileSettings(
        model_path=None,
        shape=plan.shape,
        budgets=(plan.budgets[0], plan.budgets[-1]) if by_dtype else plan.budgets,
        batch_sizes=plan.batch_sizes[:1] if by_dtype else plan.batch_sizes,
        new_tokens=(plan.new_tokens,),
        warmup=plan.warmup,
        repeats=plan.repeats,
        min_duration_s=0.0,
        device=plan.device,
        dtype=variant if by_dtype else plan.dtype,
        compile=variant == "compiled",
        count_flops=True,
        gpus=(),
        threads=default_threads(plan.device),
    )
    eager = {(r.budget, r.batch_size): r for r in (done or {}).get("eager", [])}
    records = measured_records(settings)
    if done is not None:
        done[variant] = records
    results = []
    for record in records:
        name = f"controlled/{variant} budget {record.budget} batch {record.batch_size}"
        problems = check_controlled(record, cuda)
        if cuda:
            problems += check_power(record, idle.get("power_w"), idle.get("power_limit_w"))
        if variant == "compiled":
            problems += check_compiled_speed(record, eager.get((record.budget, record.batch_size)))
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
    from .run.config import RunConfig, embedded_default
    from .run.sweep import run_sweep

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


def run_device(plan: SelftestPlan, done: dict[str, Any] | None = None) -> list[PathResult]:
    """The device facts (kept in `done["device"]`: later checks read the idle power from them)."""
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
    if done is not None:
        done["device"] = facts
    return [PathResult("device", not problems, problems, facts)]


# -- every method at one budget ---------------------------------------------------------------------------------------
def measure_method(model, inputs: dict, new_tokens: int, device: str) -> dict[str, Any]:
    """One method's request: a generate (warm-up, and the repeat's reference), then the same generate counted by
    HostSyncs: its tokens, whether its logits are finite and equal the first's tokens, its syncs and kernels."""
    import torch

    from .profiling.controlled import generate_kwargs
    from .profiling.syncs import HostSyncs

    kwargs = dict(generate_kwargs(model.config, new_tokens, compiled=False), output_logits=True)

    def once():  # the raw logits: forcing the length puts -inf on EOS in the processed scores
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
        return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits)

    first, _ = once()
    with HostSyncs(device) as syncs:
        tokens, scores = once()
    return {
        "new_tokens": tokens.shape[1],
        "finite_logits": bool(torch.isfinite(scores).all()),
        "identical_repeat": torch.equal(first, tokens),
        **syncs.figures(),
    }


def check_method(figures: dict[str, Any], stock_syncs: int, batch: int, new_tokens: int) -> list[str]:
    """A method's request: the forced tokens, finite logits, a repeat identical, host syncs under the ceiling."""
    problems = []
    if figures["new_tokens"] != new_tokens:
        problems.append(f"generated {figures['new_tokens']} tokens, {new_tokens} were forced")
    if not figures["finite_logits"]:
        problems.append("logits not finite")
    if not figures["identical_repeat"]:
        problems.append("a repeat of the same request gave other tokens")
    extra = (figures["host_syncs"] - stock_syncs) / batch
    figures["extra_syncs_per_sample"] = extra
    if extra > SYNCS_PER_SAMPLE:
        problems.append(
            f"{extra:.1f} host syncs per sample beyond the stock model's (ceiling {SYNCS_PER_SAMPLE}): "
            f"{figures['host_syncs_by_kind']}"
        )
    return problems


def method_inputs(source, model, batch: int) -> dict:
    """The controlled prompt with `tokens_per_image(model)` placeholders and the synthetic image, `batch` times."""
    import torch

    from .profiling.controlled import prompt_ids, synthetic_image
    from .reducers import tokens_per_image

    settings = source.settings
    ids = prompt_ids(model.config, tokens_per_image(model), settings.text_tokens, settings.seed)
    image = synthetic_image(model.config.vision_config.image_size, settings.seed)
    pixels = source.image_processor([image] * batch, return_tensors="pt")["pixel_values"]
    input_ids = ids.expand(batch, -1).to(source.device)
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=pixels.to(source.device, source.dtype),
    )


def run_methods(plan: SelftestPlan, dtype: str) -> list[PathResult]:
    """`methods/<dtype> <method>` rows: the stock model (none) first, then every method at plan.method_budget on the
    same random weights (vistog: fresh VisToG parts at that N)."""
    from .model import VisToGForConditionalGeneration
    from .profiling.controlled import ModelSource, ProfileSettings
    from .reducers import METHODS, apply_method, config_problem, remove_method

    settings = ProfileSettings(
        model_path=None,
        shape=plan.shape,
        budgets=(plan.method_budget,),
        batch_sizes=(plan.method_batch,),
        new_tokens=(plan.new_tokens,),
        device=plan.device,
        dtype=dtype,
    )
    source = ModelSource(settings)
    stock = VisToGForConditionalGeneration.from_llava(source.base, num_semantic_tokens=None).eval()
    full = stock.config.num_patches
    rows, stock_syncs = [], None
    for method in METHODS:
        name = f"methods/{dtype} {method}"
        budget = full if method == "none" else plan.method_budget
        model = stock
        if method == "vistog":
            model = VisToGForConditionalGeneration.from_llava(source.base, num_semantic_tokens=budget).eval()
        problem = config_problem(model.config, method, budget=budget)
        if problem:
            rows.append(PathResult(name, True, [], {"budget": budget}, skipped=problem))
            continue
        try:
            apply_method(model, method, budget)
            figures = {
                "budget": budget,
                **measure_method(model, method_inputs(source, model, plan.method_batch), plan.new_tokens, plan.device),
            }
        except Exception as exc:  # noqa: BLE001 - one method failing is its row's finding; the others still run
            rows.append(PathResult(name, False, [f"{type(exc).__name__}: {exc}"], {"budget": budget}))
            continue
        finally:
            remove_method(model)
        stock_syncs = figures["host_syncs"] if method == "none" else stock_syncs
        problems = check_method(figures, stock_syncs, plan.method_batch, plan.new_tokens)
        rows.append(PathResult(name, not problems, problems, figures))
    return rows


# -- NVML identity, one device per process --------------------------------------------------------------------------
def identity_pair(device: str) -> dict[str, Any]:
    """torch's UUID / PCI address of `device` beside those of the NVML handle nvml.py opens for it."""
    import torch

    from .profiling.nvml import nvml_handle, nvml_identity, torch_identity

    index = torch.device(device).index
    mine = torch_identity(index if index is not None else torch.cuda.current_device())
    nvml, handle, reason = nvml_handle(device)
    theirs = nvml_identity(nvml, handle) if handle is not None else None
    return {
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch_uuid": mine.uuid,
        "torch_pci": list(mine.pci) if mine.pci else None,
        "nvml_uuid": theirs.uuid if theirs else None,
        "nvml_pci": list(theirs.pci) if theirs and theirs.pci else None,
        "nvml_reason": reason,
    }


def check_identity(figures: dict[str, Any]) -> list[str]:
    """The NVML handle names the GPU torch means: equal UUIDs (where torch has one) and PCI addresses."""
    if figures.get("nvml_reason"):
        return [f"no NVML handle: {figures['nvml_reason']}"]
    problems = []
    if figures["torch_uuid"] is not None and figures["nvml_uuid"] != figures["torch_uuid"]:
        problems.append(f"NVML's GPU {figures['nvml_uuid']} is not torch's {figures['torch_uuid']}")
    if figures["nvml_pci"] != figures["torch_pci"]:
        problems.append(f"NVML's PCI address {figures['nvml_pci']} is not torch's {figures['torch_pci']}")
    return problems


def _child_json(command: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> list[dict]:
    """The JSON lines a child process printed on stdout; a failed child raises with its last stderr lines."""
    result = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-600:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def run_nvml_identity(plan: SelftestPlan) -> list[PathResult]:
    import torch

    count = torch.cuda.device_count()
    rows = []
    for index in range(2):
        name = f"nvml-identity cuda:{index}"
        if index >= count:
            rows.append(PathResult(name, True, [], {"gpus": count}, skipped=f"{count} GPU visible"))
            continue
        figures = identity_pair(f"cuda:{index}")
        problems = check_identity(figures)
        rows.append(PathResult(name, not problems, problems, figures))
    # a process that sees only the last visible GPU, as its cuda:0 (what every multi-GPU launcher does)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    last = visible.split(",")[-1].strip() if visible else str(count - 1)
    code = "import json; from vistog_bench.selftest import identity_pair; print(json.dumps(identity_pair('cuda:0')))"
    [masked] = _child_json([sys.executable, "-c", code], {"CUDA_VISIBLE_DEVICES": last})
    problems = check_identity(masked)
    unmasked = identity_pair(f"cuda:{count - 1}")["torch_uuid"]
    if masked["torch_uuid"] != unmasked:
        problems.append(f"the masked process's cuda:0 is {masked['torch_uuid']}, not GPU {last} ({unmasked})")
    rows.append(PathResult(f"nvml-identity masked to {last}", not problems, problems, masked))
    return rows


LAUNCH_WORKER = (
    "import json, os; from vistog_bench import demo; from vistog_bench.adapter import VisToGLMM; "
    "lm = VisToGLMM(pretrained=str(demo.checkpoint_for_budget(None))); "
    "print(json.dumps({'local_rank': int(os.environ['LOCAL_RANK']), 'device': str(lm.device)}))"
)


def check_launch(seen: list[dict], processes: int) -> list[str]:
    """Every process of a launch reported a device, and no two share one."""
    devices = [entry["device"] for entry in seen]
    if len(devices) != processes:
        return [f"{len(devices)} of {processes} processes reported a device"]
    if len(set(devices)) != processes:
        return [f"processes share a device: {sorted(devices)} (each rank must bind its LOCAL_RANK's GPU)"]
    return []


def run_launch(plan: SelftestPlan) -> list[PathResult]:
    """Two processes of a torchrun launch each build the lmms-eval adapter on the embedded tiny checkpoint."""
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return [PathResult("launch/2-process", True, [], {"gpus": count}, skipped=f"{count} GPU visible, 2 needed")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    seen = _child_json([*launch, sys.executable, "-c", LAUNCH_WORKER])
    problems = check_launch(seen, 2)
    return [PathResult("launch/2-process", not problems, problems, {"processes": seen})]


# -- two training steps per distributed config ------------------------------------------------------------------------
TRAIN_CONFIGS = {  # name -> (processes, mixed precision, load dtype, FSDP config file or None)
    "train/1-process": (1, "bf16", "float32", None),
    "train/1-process-fp16": (1, "fp16", "float16", None),  # fp16 weights: the trainable ones train in float32
    "train/ddp": (2, "bf16", "float32", None),
    "train/fsdp2": (2, "bf16", "float32", "fsdp2.yaml"),
}
TRAIN_STEPS = 2


def check_training(figures: dict[str, Any], processes: int) -> list[str]:
    """The run exited 0 after TRAIN_STEPS steps on `processes` processes, its losses finite."""
    if figures.get("exit_code") != 0:
        return [f"exit {figures.get('exit_code')}: {figures.get('stderr_tail', '')}"]
    problems = []
    if figures.get("steps") != TRAIN_STEPS:
        problems.append(f"{figures.get('steps')} steps, {TRAIN_STEPS} asked for")
    if figures.get("processes") != processes:
        problems.append(f"{figures.get('processes')} processes, {processes} launched")
    losses = [figures.get("first_loss"), figures.get("last_loss")]
    if not all(isinstance(v, float) and math.isfinite(v) for v in losses):
        problems.append(f"losses {losses}")
    return problems


def run_train(plan: SelftestPlan, name: str) -> list[PathResult]:
    """`vistog-bench train --stage llava` for TRAIN_STEPS steps on the embedded tiny LLaVA and a few synthetic
    conversations, launched as the config says."""
    import torch

    from . import demo
    from .demo.world import write_llava_training_data
    from .train.configs import fsdp_launch_env

    processes, mixed, dtype, fsdp = TRAIN_CONFIGS[name]
    if processes > torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        return [PathResult(name, True, [], {"gpus": gpus}, skipped=f"{gpus} GPU visible, {processes} needed")]
    with tempfile.TemporaryDirectory(prefix="vistog-selftest-train-") as work:
        data = write_llava_training_data(Path(work) / "data", "train", num_images=8, num_clips=0)
        out = Path(work) / "out"
        args = ["-m", "vistog_bench.train", "--stage", "llava", "--model", str(demo.checkpoint_for_budget(None))]
        args += ["--data", str(data / "conversations.json"), "--output-dir", str(out), "--batch-size", "2"]
        args += ["--max-steps", str(TRAIN_STEPS), "--mixed-precision", mixed, "--dtype", dtype]
        args += ["--log-every", "1", "--quiet", "--no-progress"]
        launch = [sys.executable]
        if processes > 1:
            launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
            launch += ["--no-python", sys.executable]
        env = {**os.environ, **(fsdp_launch_env(fsdp) if fsdp else {})}
        result = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=400, check=False)
        figures: dict[str, Any] = {"exit_code": result.returncode, "mixed_precision": mixed, "dtype": dtype}
        log = out / "training_log.jsonl"
        if result.returncode == 0 and log.is_file():
            figures |= json.loads(log.read_text().splitlines()[-1])
        else:
            figures["stderr_tail"] = result.stderr.strip()[-600:]
    problems = check_training(figures, processes)
    return [PathResult(name, not problems, problems, figures)]


# -- the plan ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One check of the plan: the devices it runs on, what its rows print, the rule of its verdict, how it runs
    (plan, records of earlier checks -> rows)."""

    devices: tuple[str, ...]
    prints: str
    verdict: str
    run: Callable[[SelftestPlan, dict], list[PathResult]]


_CONTROLLED_RULE = (
    f"every stage timed; host and first-token clocks agree with the stages (median gap <= {CLOCK_TOLERANCE:.0%}, "
    f"noisy where the stage spread past CV {NOISY_CV:.0%}); counted = analytic FLOPs; KV measured >= computed; GPU: "
    "per-stage peaks, prefill peak >= the weights' bytes, energy at a mean power between "
    f"{IDLE_FRACTION:.0%} of idle and {1 + LIMIT_SLACK:.0%} of the power limit"
)
_METHODS_PRINTS = "per method: tokens, host syncs (by kind; CUDA's count), extra syncs per sample, attention kernels"
_METHODS_RULE = (
    "the forced tokens, finite logits, a repeat gives identical tokens, host syncs beyond the stock model's <= "
    f"{SYNCS_PER_SAMPLE} per sample; skipped where the method cannot reach the budget"
)
_TRAIN_RULE = f"exit 0, {TRAIN_STEPS} steps, finite losses; skipped with fewer GPUs than processes"

CHECKS: dict[str, Check] = {
    "device": Check(
        ("cpu", "cuda"),
        "GPU name, driver, SM clock (NVML), torch threads",
        "NVML names the GPU, its driver and SM clock (CPU: always ok)",
        lambda plan, done: run_device(plan, done),
    ),
    "nvml-identity": Check(
        ("cuda",),
        "torch's UUID / PCI address beside the NVML handle's: cuda:0, cuda:1, a process masked to the last GPU",
        "equal UUID and PCI address in each; the masked process's cuda:0 is the GPU it was masked to; cuda:1 "
        "skipped on one GPU",
        lambda plan, done: run_nvml_identity(plan),
    ),
    "controlled/eager": Check(
        ("cpu", "cuda"),
        "TTFT p50 / p99, both second clocks, total, peaks, KV bytes, energy and mean power, FLOPs, TTFT / floor",
        _CONTROLLED_RULE,
        lambda plan, done: run_controlled(plan, "eager", done),
    ),
    "controlled/compiled": Check(
        ("cuda",),
        "the eager figures and compile: ran, decode hooks fired, graphs compiled; decode ms per token",
        "the eager rules; a compiled graph ran in every repeat (no decode hook fired), and decode per token is "
        "below the eager cell's",
        lambda plan, done: run_controlled(plan, "compiled", done),
    ),
    "controlled/float16": Check(
        ("cuda",),
        "the eager figures in float16, first and last budget, batch 1",
        "the eager rules",
        lambda plan, done: run_controlled(plan, "float16", done),
    ),
    "methods/float32": Check(("cpu",), _METHODS_PRINTS, _METHODS_RULE, lambda plan, done: run_methods(plan, "float32")),
    "methods/bfloat16": Check(
        ("cuda",), _METHODS_PRINTS, _METHODS_RULE, lambda plan, done: run_methods(plan, "bfloat16")
    ),
    "methods/float16": Check(
        ("cuda",), _METHODS_PRINTS, _METHODS_RULE, lambda plan, done: run_methods(plan, "float16")
    ),
    "launch/2-process": Check(
        ("cuda",),
        "each process's local rank and the device its adapter model sits on",
        "two processes, two devices; skipped with fewer than 2 GPUs",
        lambda plan, done: run_launch(plan),
    ),
    **{
        name: Check(
            ("cuda",),
            "exit code, steps, first / last loss, processes, distributed type, the LLM's compute dtype",
            _TRAIN_RULE,
            lambda plan, done, name=name: run_train(plan, name),
        )
        for name in TRAIN_CONFIGS
    },
    "analytic": Check(
        ("cpu", "cuda"),
        "prefill FLOPs per budget x batch",
        "every record has roofline floors",
        lambda plan, done: run_analytic(plan),
    ),
    "sweep": Check(
        ("cpu", "cuda"),
        "cells, samples, profile records, samples per second",
        "every cell ok and every request profiled",
        lambda plan, done: run_sweep_path(plan),
    ),
}


def selftest(plan: SelftestPlan) -> list[PathResult]:
    """Every check of the plan in turn; a check that raises becomes a failed row with the error, and the next still
    runs."""
    done: dict[str, Any] = {}
    results = []
    for name in plan.checks:
        started = time.perf_counter()
        try:
            rows = CHECKS[name].run(plan, done)
        except Exception as exc:  # noqa: BLE001 - a broken path is this command's finding, named in its row
            rows = [PathResult(name, False, [f"{type(exc).__name__}: {exc}"])]
        for row in rows:
            row.figures.setdefault("step_seconds", round(time.perf_counter() - started, 3))
        results += rows
    return results


def plan_table(plan: SelftestPlan) -> str:
    """The plan as Markdown: each check, what it prints and its verdict rule."""
    from tabulate import tabulate

    rows = [[name, CHECKS[name].prints, CHECKS[name].verdict] for name in plan.checks]
    title = f"## plan: {plan.device}, {plan.shape}, {plan.dtype}\n\n"
    return title + tabulate(rows, headers=["check", "prints", "verdict rule"], tablefmt="github") + "\n"


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
        "power_w",
        "execution_path",
        "host_syncs",
        "extra_syncs_per_sample",
        "cuda_sync_warnings",
        "attention_kernels",
        "identical_repeat",
        "torch_uuid",
        "nvml_uuid",
        "processes",
        "steps",
        "last_loss",
    )
    rows = []
    for r in results:
        over = {k: v for k, v in r.figures.items() if k.startswith("ttft_over_floor_")}
        shown = {k: r.figures[k] for k in keys if r.figures.get(k) is not None} | over
        rows.append(
            [
                r.path,
                r.verdict,
                "; ".join(r.problems + r.noise + ([r.skipped] if r.skipped else [])) or "-",
                ", ".join(f"{k}={short(v)}" for k, v in shown.items()) or "-",
            ]
        )
    title = f"# vistog-bench selftest: {plan.device}, {plan.shape}, {plan.dtype}\n\n"
    return title + tabulate(rows, headers=["path", "status", "problems", "figures"], tablefmt="github") + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (tiny preset, < 1 min) or cuda / cuda:N (7B shape)")
    parser.add_argument("--output", default="results", help="folder for selftest-<device>.json and .md")
    parser.add_argument("--plan", action="store_true", help="print the device's checks and verdict rules, run nothing")


def main(args: argparse.Namespace) -> int:
    import torch

    from .results import check_writable_dir, write_json

    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.plan:
        print(plan_table(plan_for(args.device)))
        return 0
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
    stem.with_suffix(".md").write_text(table + "\n" + plan_table(plan), encoding="utf-8")
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
    "CHECKS",
    "Check",
    "SelftestPlan",
    "PathResult",
    "plan_for",
    "plan_table",
    "selftest",
    "check_compiled_speed",
    "check_identity",
    "check_launch",
    "check_method",
    "check_power",
    "check_training",
    "identity_pair",
    "measure_method",
    "check_controlled",
    "clock_disagreements",
    "markdown_table",
    "add_arguments",
    "main",
]
