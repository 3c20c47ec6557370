"""Profiler overhead: end-to-end generate time with the request profiler on vs off (tiny model, CPU).

    .venv/bin/python benchmarks/profiler_overhead.py [--budget 64] [--new-tokens 8] [--pairs 40] [--threads 1]

"on" is a request on an attached profiler, as the harness uses it (`run` attaches once per task, `profile` once per
budget); attaching and detaching (eight hook registrations) is reported on its own line.
Runs are interleaved in ABBA order (off, on, on, off, ...) so drifting machine load hits both sides alike; reported: median of each
side, the median of the paired ratios on/off, and the time spent inside the profiler's own hook callbacks per
request and process CPU time (measured directly, so it holds up on a loaded machine where the A/B difference drowns in noise).
Target: <= 2 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from vistog_bench.model import VisToGForConditionalGeneration  # noqa: E402
from vistog_bench.profiling import RequestProfiler  # noqa: E402
from vistog_bench.profiling.controlled import prompt_ids  # noqa: E402
from vistog_bench.testing import tiny_llava  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 eases contention on shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    llava = tiny_llava()
    semantic = None if args.budget == 576 else args.budget
    model = VisToGForConditionalGeneration.from_llava(llava, num_semantic_tokens=semantic).eval()
    ids = prompt_ids(model.config, args.budget, args.text_tokens, seed=0).expand(args.batch_size, -1)
    pixels = torch.randn(args.batch_size, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, do_sample=False,
                  max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

    profiler = RequestProfiler(model, device="cpu")
    # A second, instrumented profiler measures the time spent inside its callbacks (what the hooks add); it is kept
    # out of the A/B runs, where the instrument itself would be overhead.
    instrumented = RequestProfiler(model, device="cpu")
    in_hooks = [0.0]
    enter, exit_ = instrumented.enter, instrumented.exit

    def timed_enter(*a):
        start = time.perf_counter()
        enter(*a)
        in_hooks[0] += time.perf_counter() - start

    def timed_exit(*a):
        start = time.perf_counter()
        exit_(*a)
        in_hooks[0] += time.perf_counter() - start

    instrumented.enter, instrumented.exit = timed_enter, timed_exit

    def callback_time() -> float:
        in_hooks[0] = 0.0
        with instrumented.attached():
            with instrumented.request(method="vistog", budget=args.budget, batch_size=args.batch_size):
                model.generate(**kwargs)
        return in_hooks[0]

    def off() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        model.generate(**kwargs)
        return time.perf_counter() - start, time.process_time() - cpu

    def on() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        with profiler.request(method="vistog", budget=args.budget, batch_size=args.batch_size):
            model.generate(**kwargs)
        return time.perf_counter() - start, time.process_time() - cpu

    def fixed_cost() -> float:
        """Open and close a request around no work: RSS reset/read, NVML read, record build."""
        start = time.perf_counter()
        with profiler.request(method="vistog", budget=args.budget, batch_size=args.batch_size):
            pass
        return time.perf_counter() - start

    def attach_cost() -> float:
        start = time.perf_counter()
        with profiler.attached():
            pass
        return time.perf_counter() - start

    attach_ms = statistics.median(attach_cost() for _ in range(200)) * 1e3
    attached = profiler.attached()
    attached.__enter__()
    for _ in range(args.warmup):
        off()
        on()
    offs, ons, off_cpu, on_cpu = [], [], [], []
    for pair in range(args.pairs):
        # ABBA order: neither side always runs first
        for side in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            if side == "off":
                seconds, cpu = off()
                offs.append(seconds)
                off_cpu.append(cpu)
            else:
                seconds, cpu = on()
                ons.append(seconds)
                on_cpu.append(cpu)
    fixed_ms = statistics.median(fixed_cost() for _ in range(200)) * 1e3
    attached.__exit__(None, None, None)
    hook_times = [callback_time() for _ in range(20)]
    ratios = [b / a for a, b in zip(offs, ons)]
    median_off, median_on = statistics.median(offs) * 1e3, statistics.median(ons) * 1e3
    hook_ms = statistics.median(hook_times) * 1e3
    print(f"tiny model, CPU, {torch.get_num_threads()} thread(s), budget {args.budget}, batch {args.batch_size}, "
          f"{args.new_tokens} new tokens, {args.pairs} interleaved pairs")
    print(f"off: median {median_off:.2f} ms   on: median {median_on:.2f} ms   "
          f"overhead (medians) {100 * (median_on / median_off - 1):+.2f} %")
    print(f"paired ratio on/off: median {100 * (statistics.median(ratios) - 1):+.2f} %  "
          f"(p10 {100 * (sorted(ratios)[len(ratios) // 10] - 1):+.1f} %, "
          f"p90 {100 * (sorted(ratios)[9 * len(ratios) // 10] - 1):+.1f} %)")
    cpu_off, cpu_on = statistics.median(off_cpu) * 1e3, statistics.median(on_cpu) * 1e3
    print(f"process CPU time (less sensitive to other jobs): off {cpu_off:.2f} ms  on {cpu_on:.2f} ms  "
          f"overhead {100 * (cpu_on / cpu_off - 1):+.2f} %")
    print(f"inside profiler callbacks: {hook_ms:.3f} ms per request; request open/close: {fixed_ms:.3f} ms; "
          f"together {100 * (hook_ms + fixed_ms) / median_off:.2f} % of a request; attach + detach (once per task): "
          f"{attach_ms:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
