"""`vistog-bench profile`: controlled latency / FLOPs / memory / energy per visual-token budget.

    vistog-bench profile --shape tiny --budgets 576,64 --batch-sizes 1 --new-tokens 1,8 --repeats 20
    vistog-bench profile --shape llava-1.5-7b --analytic --gpu h100-sxm,a100-80gb,h200
    vistog-bench profile --model PATH --device cuda --dtype bfloat16 --compile

Writes a run folder (manifest.json + profile.jsonl of kind="controlled" or kind="analytic" records) under --output
and prints a table (or the records as JSON lines with --json). On CPU the 7B shape works but is slow (a 7B prefill
is ~50 s fp32 on 2 cores, and random-initialising 7B fp32 weights needs ~28 GB RAM): use `tiny` or `--analytic`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..arguments import comma_list, int_list
from ..dtypes import DTYPE_NAMES
from ..errors import UsageError
from ..provenance import git_sha, now, package_versions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", help="local LLaVA-1.5 or VisToG checkpoint (Hugging Face layout)")
    source.add_argument("--shape", metavar="NAME", help="named shape with random weights: llava-1.5-7b, -13b, tiny")
    parser.add_argument("--budgets", default="576,192,128,64", help="visual tokens per image (576 = VisToG off)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", default="1,32", help="forced output lengths (min_new_tokens = max_new_tokens)")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt text tokens, BOS included")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (optimum-benchmark, vLLM: 10)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs, at least (vLLM bench latency: 30)")
    parser.add_argument("--min-duration", type=float, default=10.0, metavar="S",
                        help="keep repeating until the timed runs have taken S seconds (optimum-benchmark: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on CPU, where more stall on shared cores; torch's on a GPU)")
    parser.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help=f"{' | '.join(DTYPE_NAMES)} (default: bfloat16 on cuda, "
                                                     "float32 on cpu)")
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile decode (CUDA only)")
    parser.add_argument("--analytic", action="store_true", help="no weights: FLOPs, bytes, roofline floors")
    parser.add_argument("--gpu", default="h100-sxm", help="GPU(s) for roofline floors, comma-separated")
    parser.add_argument("--no-count-flops", action="store_true", help="skip the FlopCounterMode pass per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print records as JSON lines instead of a table")
    parser.add_argument("--output", default="results", help="folder under which the run folder is created")


def settings_from_args(args: argparse.Namespace):
    """Validate the arguments (UsageError on bad input) and return ProfileSettings."""
    from vistog_bench.model.presets import preset_config

    from .controlled import ProfileSettings
    from .roofline import get_gpu
    from .timers import default_threads

    if args.model is None and args.shape is None:
        raise UsageError("give --model PATH or --shape NAME")
    if args.shape is not None:
        preset_config(args.shape)  # unknown names raise UsageError with the known ones
    elif not Path(args.model).is_dir():
        raise UsageError(f"checkpoint folder not found: {args.model}")
    gpus = comma_list(args.gpu)
    for name in gpus:
        get_gpu(name)
    _check_protocol(args)
    device, dtype = _device_and_dtype(args)
    return ProfileSettings(
        model_path=args.model, shape=args.shape,
        budgets=_nonempty(int_list(args.budgets, "--budgets", minimum=1), "--budgets"),
        batch_sizes=_nonempty(int_list(args.batch_sizes, "--batch-sizes", minimum=1), "--batch-sizes"),
        new_tokens=_nonempty(int_list(args.new_tokens, "--new-tokens", minimum=1), "--new-tokens"),
        text_tokens=args.text_tokens, warmup=args.warmup, repeats=args.repeats, min_duration_s=args.min_duration,
        threads=args.threads if args.threads is not None else default_threads(device),
        device=device, dtype=dtype, compile=args.compile, count_flops=not args.no_count_flops, gpus=gpus,
        seed=args.seed,
    )


def _check_protocol(args: argparse.Namespace) -> None:
    """The prompt length, warm-up, repeats, minimum duration and threads of the measurement protocol."""
    if args.text_tokens < 1:
        raise UsageError(f"--text-tokens must be >= 1 (BOS), got {args.text_tokens}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.min_duration < 0:
        raise UsageError(f"--min-duration must be >= 0 seconds, got {args.min_duration}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """(device, dtype) with their defaults (cuda when available; bfloat16 on cuda and for --analytic, else
    float32), checked, and `--compile`'s conditions on them."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use cuda, cuda:N or cpu") from None
    if device_type not in ("cuda", "cpu"):
        raise UsageError(f"unsupported device {device!r}; use cuda, cuda:N or cpu")
    if device_type == "cuda" and not args.analytic and not torch.cuda.is_available():
        raise UsageError("--device cuda, but CUDA is not available on this machine")
    dtype = args.dtype or ("bfloat16" if device_type == "cuda" or args.analytic else "float32")
    if dtype not in DTYPE_NAMES:
        raise UsageError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_NAMES)}")
    if args.compile:
        if args.analytic:
            raise UsageError("--compile measures an execution path; --analytic measures none")
        if device_type != "cuda":
            raise UsageError(f"--compile needs a CUDA device (static cache + CUDA graphs); got --device {device}")
        if args.warmup < 2:
            raise UsageError(f"--compile needs --warmup >= 2 (compiling and capturing CUDA graphs take the first "
                             f"runs), got {args.warmup}")
    return device, dtype


def _nonempty(values: tuple[int, ...], flag: str) -> tuple[int, ...]:
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def measured_table(records) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        ttft = r.stats.get("ttft", {})
        mismatch = r.extra.get("flops_mismatch") or {}
        rows.append([
            r.budget, r.batch_size, r.output_tokens // r.batch_size, r.path, _fmt(r.preprocess_ms), _fmt(r.vision_ms),
            _fmt(r.grouping_ms), _fmt(r.projector_ms), _fmt(r.prefill_ms), _fmt(ttft.get("p50")),
            _fmt(ttft.get("p90")), _fmt(ttft.get("p99")), _fmt(ttft.get("cv", None), 0.01, 1),
            _fmt(r.stats.get("ttft_logits_processor", {}).get("p50")),
            _fmt(r.decode_per_token_ms), _fmt(r.total_ms), _fmt(r.flops.get("total"), 1e9, 3),
            _fmt(r.counted_flops.get("total"), 1e9, 3) + ("!" if mismatch else ""),
            _fmt(r.kv_cache_bytes, 2**20), _fmt(r.energy_j),
        ])
    headers = ["budget", "batch", "new", "path", "prep ms", "vision ms", "group ms", "proj ms", "prefill ms",
               "TTFT ms", "p90", "p99", "CV %", "TTFT (LP) ms", "decode ms/tok", "total ms", "GFLOPs", "counted", "KV MiB", "J"]
    note = "medians (p50); TTFT (LP) = the first token's time by the logits processor; new = output tokens per prompt; '!' = counted vs analytic FLOPs differ by > 1 % in some stage (see extra.flops_mismatch)"
    return tabulate(rows, headers=headers, tablefmt="github") + "\n" + note


def analytic_table(records, gpus) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        row = [r.budget, r.batch_size, r.output_tokens // r.batch_size, _fmt(r.flops["vision"], 1e9), _fmt(r.flops["grouping"], 1e9),
               _fmt(r.flops["projector"], 1e9), _fmt(r.flops["prefill"], 1e12, 3),
               _fmt(r.extra["decode_flops_per_token"], 1e9), _fmt(r.extra["fastv_prefill_macs"], 1e12, 3),
               _fmt(r.weight_bytes, 1e9), _fmt(r.kv_cache_bytes, 2**20, 1)]
        for gpu in gpus:
            floor = r.extra["roofline"][gpu]
            ttft = sum(floor[s]["floor_ms"] for s in ("vision", "grouping", "projector", "prefill"))
            steps = r.output_tokens // r.batch_size - 1
            row += [_fmt(ttft, 1, 3), _fmt(floor["decode"]["floor_ms"] / steps if steps else None, 1, 3)]
        rows.append(row)
    headers = ["budget", "batch", "new", "vision GF", "group GF", "proj GF", "prefill TF", "decode GF/tok",
               "FastV prefill TMAC", "weights GB", "KV MiB"]
    for gpu in gpus:
        headers += [f"TTFT floor ms {gpu}", f"decode floor ms/tok {gpu}"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(args: argparse.Namespace) -> int:
    from vistog_bench.results import RunDir, RunManifest, check_writable_dir, new_run_id

    from .controlled import (
        ModelSource,
        analytic_records,
        measured_records,
        settings_dict,
    )
    from .nvml import device_facts
    from .roofline import get_gpu

    settings = settings_from_args(args)
    check_writable_dir(args.output, "--output")
    started = now()
    # Everything that can refuse the input (remote code, corrupt weights, budgets) runs before the run folder exists.
    records = analytic_records(settings) if args.analytic else None
    source = None if args.analytic else ModelSource(settings)
    run_id = new_run_id("profile-") + ("-analytic" if args.analytic else "")
    run = RunDir(Path(args.output) / run_id)
    run.path.mkdir(parents=True, exist_ok=False)  # a unique id: never another run's folder
    facts = device_facts("cpu" if args.analytic else settings.device)
    manifest = RunManifest(run_id=run_id, command=["vistog-bench", *sys.argv[1:]], config=settings_dict(settings),
                           git_sha=git_sha(), versions=package_versions(), device=facts, seed=settings.seed,
                           started_at=started)
    run.write_manifest(manifest)

    if args.analytic:
        run.append_profile(records)
    else:
        def land(record) -> None:
            run.append_profile([record])
            if args.json:
                print(json.dumps(dataclasses.asdict(record), default=str), flush=True)

        records = measured_records(settings, on_record=land, source=source)
    run.write_manifest(dataclasses.replace(manifest, finished_at=now()))

    if args.json:
        if args.analytic:
            for record in records:
                print(json.dumps(dataclasses.asdict(record), default=str))
    elif args.analytic:
        print(analytic_table(records, [get_gpu(name).key for name in settings.gpus]))
    else:
        print(measured_table(records))
    print(f"run folder: {run.path}", file=sys.stderr)
    return 0


__all__ = ["add_arguments", "main", "settings_from_args"]
