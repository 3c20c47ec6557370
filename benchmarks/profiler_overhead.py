"""Profiler overhead: end-to-end generate time with the request profiler on vs off (tiny model, CPU).

    .venv/bin/python benchmarks/profiler_overhead.py [--budget 64] [--new-tokens 8] [--pairs 40] [--threads 1]

"on" is a request on an attached profiler, as the harness uses it (`run` attaches once per task, `profile` once per
budget); attaching and detaching (eight hook registrations) is reported on its own line.
Runs are interleaved in ABBA order (off, on, on, off, ...) so drifting machine load hits both sides alike; reported:
median of each side, the median of the paired ratios on/off, and process CPU time. The profiler's own work is
measured directly inside real requests (so it holds up on a loaded machine where the A/B difference drowns in noise):
its hook callbacks, and opening + closing the request (RSS reset and read, NVML read, the record built from the
request's spans), as the time `with profiler.request(...)` adds around the generate. What the A/B difference holds
beyond that is PyTorch's module-call path for modules that carry hooks. Target: <= 2 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from vistog_bench.model import VisToGForConditionalGeneration
from vistog_bench.profiling import RequestProfiler
from vistog_bench.profiling.controlled import prompt_ids
from vistog_bench.testing.tiny_models import tiny_llava


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 eases contention on shared cores)")
    return parser.parse_args()


def tiny_model_and_inputs(args: argparse.Namespace) -> tuple[VisToGForConditionalGeneration, dict]:
    """The tiny VisToG model at `--budget` and generate kwargs with the output length forced."""
    semantic = None if args.budget == 576 else args.budget
    model = VisToGForConditionalGeneration.from_llava(tiny_llava(), num_semantic_tokens=semantic).eval()
    ids = prompt_ids(model.config, args.budget, args.text_tokens, seed=0).expand(args.batch_size, -1)
    pixels = torch.randn(args.batch_size, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels,
        do_sample=False,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=0,
    )
    return model, kwargs


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `fn()`."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def interleaved(off, on, pairs: int) -> dict[str, list[tuple[float, float]]]:
    """`timed` readings of each side, run in ABBA order: neither side always runs first."""
    readings: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    sides = {"off": off, "on": on}
    for pair in range(pairs):
        for side in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            readings[side].append(timed(sides[side]))
    return readings


def own_work_ms(model, kwargs: dict, request_args: dict, requests: int = 20) -> tuple[float, float]:
    """(hook callbacks, request open + close) in ms per request, medians over real requests on a second,
    instrumented profiler (kept out of the A/B runs, where the instrument itself would be overhead)."""
    instrumented = RequestProfiler(model, device="cpu")
    in_hooks = [0.0]

    def clocked(callback):
        def call(*a):
            start = time.perf_counter()
            callback(*a)
            in_hooks[0] += time.perf_counter() - start

        return call

    instrumented.enter, instrumented.exit = clocked(instrumented.enter), clocked(instrumented.exit)
    callbacks, open_close = [], []
    with instrumented.attached():
        for _ in range(requests):
            in_hooks[0] = 0.0
            outer = time.perf_counter()
            with instrumented.request(**request_args):
                inner = time.perf_counter()
                model.generate(**kwargs)
                generated = time.perf_counter()
            closed = time.perf_counter()
            callbacks.append(in_hooks[0])
            open_close.append((inner - outer) + (closed - generated))
    return statistics.median(callbacks) * 1e3, statistics.median(open_close) * 1e3


def attach_ms(profiler: RequestProfiler, repeats: int = 200) -> float:
    def attach_detach() -> float:
        start = time.perf_counter()
        with profiler.attached():
            pass
        return time.perf_counter() - start

    return statistics.median(attach_detach() for _ in range(repeats)) * 1e3


def percent(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.2f} %"


def report(args, readings: dict, hook_ms: float, open_close_ms: float, attach: float) -> None:
    offs, ons = ([wall for wall, _ in readings[side]] for side in ("off", "on"))
    off_cpu, on_cpu = ([cpu for _, cpu in readings[side]] for side in ("off", "on"))
    ratios = sorted(b / a for a, b in zip(offs, ons, strict=True))
    median_off, median_on = statistics.median(offs) * 1e3, statistics.median(ons) * 1e3
    cpu_off, cpu_on = statistics.median(off_cpu) * 1e3, statistics.median(on_cpu) * 1e3
    own = 100 * (hook_ms + open_close_ms) / cpu_off
    print(
        f"tiny model, CPU, {torch.get_num_threads()} thread(s), budget {args.budget}, batch {args.batch_size}, "
        f"{args.new_tokens} new tokens, {args.pairs} interleaved pairs"
    )
    print(
        f"off: median {median_off:.2f} ms   on: median {median_on:.2f} ms   "
        f"overhead (medians) {percent(median_on / median_off)}"
    )
    print(
        f"paired ratio on/off: median {percent(statistics.median(ratios))}  "
        f"(p10 {percent(ratios[len(ratios) // 10])}, p90 {percent(ratios[9 * len(ratios) // 10])})"
    )
    print(
        f"process CPU time (less sensitive to other jobs): off {cpu_off:.2f} ms  on {cpu_on:.2f} ms  "
        f"overhead {percent(cpu_on / cpu_off)}"
    )
    print(
        f"profiler's own work in a request: callbacks {hook_ms:.3f} ms + open/close {open_close_ms:.3f} ms = "
        f"{own:.2f} % of a request; the rest of the CPU-time overhead (hooked module calls): "
        f"{100 * (cpu_on / cpu_off - 1) - own:+.2f} %; attach + detach (once per task): {attach:.3f} ms"
    )


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, kwargs = tiny_model_and_inputs(args)
    request_args = dict(method="vistog", budget=args.budget, batch_size=args.batch_size)
    profiler = RequestProfiler(model, device="cpu")
    attach = attach_ms(profiler)

    def off() -> None:
        model.generate(**kwargs)

    def on() -> None:
        with profiler.request(**request_args):
            model.generate(**kwargs)

    with profiler.attached():
        for _ in range(args.warmup):
            off()
            on()
        readings = interleaved(off, on, args.pairs)
    hook_ms, open_close_ms = own_work_ms(model, kwargs, request_args)
    report(args, readings, hook_ms, open_close_ms, attach)
    return 0


if __name__ == "__main__":
    sys.exit(main())
