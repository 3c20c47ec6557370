"""`vistog-bench profile`: controlled latency / FLOPs / memory / energy per visual-token budget.

    vistog-bench profile --shape tiny --budgets 576,64 --batch-sizes 1 --new-tokens 1,8 --repeats 20
    vistog-bench profile --shape llava-1.5-7b --analytic --gpu h100-sxm,a100-80gb,h200
    vistog-bench profile --model PATH --device cuda --dtype bfloat16 --compile
    vistog-bench profile --shape llava-next-7b --analytic --budgets 2928,640,320,160 --image-size 672x672

Writes a run folder (manifest.json + profile.jsonl of kind="controlled" or kind="analytic" records) under --output
and prints a table (or the records as JSON lines with --json). Shapes of other families (`llava-next-7b`,
`llava-onevision-7b`, `qwen2.5-vl-7b`; `model.presets.family_preset_config`) are analytic only: the prefill FLOPs of
one image's prompt (`flops.family_budget_prefills`) at each budget under the family's rule (NeXT / OneVision: visual
tokens per image summed over its tiles; Qwen2.5-VL: percent of the image's own count), for an image of --image-size
(H x W px, default 672 x 672), with no weights built. On CPU the 7B shape works but is slow (a 7B prefill
is ~50 s fp32 on 2 cores, and random-initialising 7B fp32 weights needs ~28 GB RAM): use `tiny` or `--analytic`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..cli import comma_list, int_list
from ..dtypes import DTYPE_NAMES
from ..errors import UsageError
from ..results.provenance import git_sha, now, package_versions

LLAVA_BUDGETS = "576,192,128,64"
DEFAULT_IMAGE_SIZE = "672x672"  # LLaVA-NeXT's largest square grid (2 x 2 tiles of 336 px)
# Family shapes' budgets after the full one (model.families' rule names): per-image totals as VisionZip reports
# LLaVA-NeXT (Yang et al., arXiv 2412.04467, Table 2: 640, 320, 160 of up to 2,880 tokens); percentages halving.
FAMILY_BUDGETS = {"per_image_total": (640, 320, 160), "percent_of_own": (50, 25, 12)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", help="local LLaVA-1.5 or VisToG checkpoint (Hugging Face layout)")
    source.add_argument(
        "--shape",
        metavar="NAME",
        help="named shape with random weights: llava-1.5-7b, -13b, tiny; "
        "analytic only: llava-next-7b, llava-onevision-7b, qwen2.5-vl-7b",
    )
    parser.add_argument(
        "--budgets",
        default=None,
        help=f"visual tokens per image (default {LLAVA_BUDGETS}; 576 = VisToG off); family shapes: "
        "their rule's (default: the full budget, then "
        f"{','.join(map(str, FAMILY_BUDGETS['per_image_total']))} per image or "
        f"{','.join(map(str, FAMILY_BUDGETS['percent_of_own']))} percent)",
    )
    parser.add_argument(
        "--image-size",
        default=None,
        metavar="HxW",
        help=f"family shapes: the image's height x width in px (default {DEFAULT_IMAGE_SIZE})",
    )
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", default="1,32", help="forced output lengths (min_new_tokens = max_new_tokens)")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt text tokens, BOS included")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (optimum-benchmark, vLLM: 10)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs, at least (vLLM bench latency: 30)")
    parser.add_argument(
        "--min-duration",
        type=float,
        default=10.0,
        metavar="S",
        help="keep repeating until the timed runs have taken S seconds (optimum-benchmark: 10)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on CPU, where more stall on shared cores; torch's on a GPU)",
    )
    parser.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, help=f"{' | '.join(DTYPE_NAMES)} (default: bfloat16 on cuda, float32 on cpu)"
    )
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile decode (CUDA only)")
    parser.add_argument("--analytic", action="store_true", help="no weights: FLOPs, bytes, roofline floors")
    parser.add_argument("--gpu", default="h100-sxm", help="GPU(s) for roofline floors, comma-separated")
    parser.add_argument("--no-count-flops", action="store_true", help="skip the FlopCounterMode pass per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print records as JSON lines instead of a table")
    parser.add_argument("--output", default="results", help="folder under which the run folder is created")


def settings_from_args(args: argparse.Namespace):
    """Validate the arguments (UsageError on bad input) and return ProfileSettings."""
    from vistog_bench.model.presets import PRESETS, family_preset_config, preset_config

    from .controlled import ProfileSettings
    from .roofline import get_gpu
    from .timers import default_threads

    if args.model is None and args.shape is None:
        raise UsageError("give --model PATH or --shape NAME")
    if args.image_size is not None:
        raise UsageError(
            "--image-size applies to the family shapes (llava-next-7b, llava-onevision-7b, "
            "qwen2.5-vl-7b); LLaVA-1.5 reads 336 x 336 px"
        )
    if args.shape is not None and args.shape not in PRESETS:
        family_preset_config(args.shape)  # an unknown name: UsageError naming every known shape
    if args.shape is not None:
        preset_config(args.shape)
    elif not Path(args.model).is_dir():
        raise UsageError(f"checkpoint folder not found: {args.model}")
    gpus = comma_list(args.gpu)
    for name in gpus:
        get_gpu(name)
    _check_protocol(args)
    device, dtype = _device_and_dtype(args)
    return ProfileSettings(
        model_path=args.model,
        shape=args.shape,
        budgets=_nonempty(int_list(args.budgets or LLAVA_BUDGETS, "--budgets", minimum=1), "--budgets"),
        batch_sizes=_nonempty(int_list(args.batch_sizes, "--batch-sizes", minimum=1), "--batch-sizes"),
        new_tokens=_nonempty(int_list(args.new_tokens, "--new-tokens", minimum=1), "--new-tokens"),
        text_tokens=args.text_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        min_duration_s=args.min_duration,
        threads=args.threads if args.threads is not None else default_threads(device),
        device=device,
        dtype=dtype,
        compile=args.compile,
        count_flops=not args.no_count_flops,
        gpus=gpus,
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
            raise UsageError(
                f"--compile needs --warmup >= 2 (compiling and capturing CUDA graphs take the first "
                f"runs), got {args.warmup}"
            )
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
        rows.append(
            [
                r.budget,
                r.batch_size,
                r.output_tokens // r.batch_size,
                r.path,
                _fmt(r.preprocess_ms),
                _fmt(r.vision_ms),
                _fmt(r.grouping_ms),
                _fmt(r.projector_ms),
                _fmt(r.prefill_ms),
                _fmt(ttft.get("p50")),
                _fmt(ttft.get("p90")),
                _fmt(ttft.get("p99")),
                _fmt(ttft.get("cv", None), 0.01, 1),
                _fmt(r.stats.get("ttft_logits_processor", {}).get("p50")),
                _fmt(r.decode_per_token_ms),
                _fmt(r.total_ms),
                _fmt(r.flops.get("total"), 1e9, 3),
                _fmt(r.counted_flops.get("total"), 1e9, 3) + ("!" if mismatch else ""),
                _fmt(r.kv_cache_bytes, 2**20),
                _fmt(r.energy_j),
            ]
        )
    headers = [
        "budget",
        "batch",
        "new",
        "path",
        "prep ms",
        "vision ms",
        "group ms",
        "proj ms",
        "prefill ms",
        "TTFT ms",
        "p90",
        "p99",
        "CV %",
        "TTFT (LP) ms",
        "decode ms/tok",
        "total ms",
        "GFLOPs",
        "counted",
        "KV MiB",
        "J",
    ]
    note = (
        "medians (p50); TTFT (LP) = the first token's time by the logits processor; new = output tokens per prompt; "
        "'!' = counted vs analytic FLOPs differ by > 1 % in some stage (see extra.flops_mismatch)"
    )
    return tabulate(rows, headers=headers, tablefmt="github") + "\n" + note


def analytic_table(records, gpus) -> str:
    from tabulate import tabulate

    rows = []
    for r in records:
        row = [
            r.budget,
            r.batch_size,
            r.output_tokens // r.batch_size,
            _fmt(r.flops["vision"], 1e9),
            _fmt(r.flops["grouping"], 1e9),
            _fmt(r.flops["projector"], 1e9),
            _fmt(r.flops["prefill"], 1e12, 3),
            _fmt(r.extra["decode_flops_per_token"], 1e9),
            _fmt(r.extra["fastv_prefill_macs"], 1e12, 3),
            _fmt(r.weight_bytes, 1e9),
            _fmt(r.kv_cache_bytes, 2**20, 1),
        ]
        for gpu in gpus:
            floor = r.extra["roofline"][gpu]
            ttft = sum(floor[s]["floor_ms"] for s in ("vision", "grouping", "projector", "prefill"))
            steps = r.output_tokens // r.batch_size - 1
            row += [_fmt(ttft, 1, 3), _fmt(floor["decode"]["floor_ms"] / steps if steps else None, 1, 3)]
        rows.append(row)
    headers = [
        "budget",
        "batch",
        "new",
        "vision GF",
        "group GF",
        "proj GF",
        "prefill TF",
        "decode GF/tok",
        "FastV prefill TMAC",
        "weights GB",
        "KV MiB",
    ]
    for gpu in gpus:
        headers += [f"TTFT floor ms {gpu}", f"decode floor ms/tok {gpu}"]
    return tabulate(rows, headers=headers, tablefmt="github")


# -- family shapes (analytic only) -----------------------------------------------------------------------------------
def image_size(text: str | None) -> tuple[int, int]:
    """`HxW` (or one number for a square) in px -> (H, W)."""
    text = text or DEFAULT_IMAGE_SIZE
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--image-size {text}: give height x width in px, e.g. 672x672 (or 672)")
    height, width = int(parts[0]), int(parts[-1])
    return height, width


def family_analytic_records(args: argparse.Namespace) -> tuple[list, dict]:
    """The analytic records of a family shape (UsageError on anything the shape or its rule refuses), and the
    settings they were made with."""
    from vistog_bench.model.families import family_for
    from vistog_bench.model.presets import family_preset_config
    from vistog_bench.results import ProfileRecord

    from . import flops as F

    config = family_preset_config(args.shape)
    if not args.analytic:
        raise UsageError(f"--shape {args.shape}: family shapes give analytic figures only; add --analytic")
    _check_protocol(args)
    family = family_for(config)
    rule = family.budget_rule
    height, width = image_size(args.image_size)
    full = family.full_budget(config)
    budgets = int_list(args.budgets, "--budgets") or tuple(dict.fromkeys((full, *FAMILY_BUDGETS[rule])))
    try:
        prefills = F.family_budget_prefills(
            config, _nonempty(budgets, "--budgets"), height=height, width=width, text_tokens=args.text_tokens
        )
    except UsageError:
        raise
    except ValueError as exc:  # smart_resize: an aspect ratio above 200
        raise UsageError(f"--image-size {args.image_size}: {exc}") from None
    dtype = args.dtype or "bfloat16"
    settings = {
        "shape": args.shape,
        "budgets": list(budgets),
        "budget_rule": rule,
        "image_size": [height, width],
        "text_tokens": args.text_tokens,
        "dtype": dtype,
    }
    records = [
        ProfileRecord(
            kind="analytic",
            method="none" if p.visual_tokens == p.geometry.tokens else "llm_input",
            budget=p.budget,
            batch_size=1,
            device="analytic",
            dtype=dtype,
            execution_path="analytic",
            visual_tokens=p.visual_tokens,
            text_tokens=args.text_tokens,
            flops=p.flops,
            null_reasons={"*_ms": "analytic record: nothing is measured"},
            extra={
                "flops_convention": F.CONVENTION,
                "budget_rule": rule,
                "image_size": [height, width],
                "visual_tokens_unreduced": p.geometry.tokens,
                "views": p.geometry.views,
                "grid": list(p.geometry.grid) if p.geometry.grid else None,
                "method_note": "llm_input: any reducer at the LLM input (random, divprune, cdpruner); the encoder and "
                "projector run in full",
            },
        )
        for p in prefills
    ]
    return records, settings


def family_table(records, shape: str) -> str:
    """The analytic prefill per budget of a family shape, with the image and rule it assumes."""
    from tabulate import tabulate

    from .flops import CONVENTION

    first = records[0].extra
    height, width = first["image_size"]
    encoder = f"{first['views']} views" if first["grid"] is None else f"{first['grid'][0]} x {first['grid'][1]} patches"
    unit = {
        "per_image_total": "visual tokens per image, summed over its tiles",
        "percent_of_own": "percent of the image's own visual tokens",
    }[first["budget_rule"]]
    rows = [
        [
            r.budget,
            f"{r.visual_tokens} of {r.extra['visual_tokens_unreduced']}",
            _fmt(r.flops["vision"], 1e12, 3),
            _fmt(r.flops["projector"], 1e12, 3),
            _fmt(r.flops["prefill"], 1e12, 3),
            _fmt(r.flops["total"], 1e12, 3),
        ]
        for r in records
    ]
    head = (
        f"{shape}: one {height} x {width} px (H x W) image ({encoder}) + {records[0].text_tokens} text tokens; "
        f"budget = {unit}"
    )
    table = tabulate(
        rows,
        headers=["budget", "visual tokens", "vision TF", "projector TF", "prefill TF", "total TF"],
        tablefmt="github",
    )
    return f"{head}\n{table}\nTF = 1e12 FLOPs ({CONVENTION}); the encoder and projector run in full at every budget"


def main(args: argparse.Namespace) -> int:
    from vistog_bench.model.presets import FAMILY_PRESETS
    from vistog_bench.results import RunDir, RunManifest, check_writable_dir, new_run_id

    from .controlled import (
        ModelSource,
        analytic_records,
        measured_records,
        settings_dict,
    )
    from .nvml import device_facts
    from .roofline import get_gpu

    analytic_only = args.shape in FAMILY_PRESETS  # a family the controlled profiler does not rebuild per budget
    if analytic_only:
        records, config = family_analytic_records(args)
        settings = None
    else:
        settings = settings_from_args(args)
        config = settings_dict(settings)
    check_writable_dir(args.output, "--output")
    started = now()
    # Everything that can refuse the input (remote code, corrupt weights, budgets) runs before the run folder exists.
    if not analytic_only:
        records = analytic_records(settings) if args.analytic else None
    source = None if args.analytic else ModelSource(settings)
    run_id = new_run_id("profile-") + ("-analytic" if args.analytic else "")
    run = RunDir(Path(args.output) / run_id)
    run.path.mkdir(parents=True, exist_ok=False)  # a unique id: never another run's folder
    facts = device_facts("cpu" if args.analytic else settings.device)
    manifest = RunManifest(
        run_id=run_id,
        command=["vistog-bench", *sys.argv[1:]],
        config=config,
        git_sha=git_sha(),
        versions=package_versions(),
        device=facts,
        seed=args.seed,
        started_at=started,
    )
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
    elif analytic_only:
        print(family_table(records, args.shape))
    elif args.analytic:
        print(analytic_table(records, [get_gpu(name).key for name in settings.gpus]))
    else:
        print(measured_table(records))
    print(f"run folder: {run.path}", file=sys.stderr)
    return 0


__all__ = ["add_arguments", "family_analytic_records", "family_table", "image_size", "main", "settings_from_args"]
