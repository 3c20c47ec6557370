"""Clocks for stage timing: CUDA events on a GPU (no host synchronisation until `synchronize`), `perf_counter` on CPU.

A clock hands out opaque marks; `elapsed_ms(a, b)` is valid only after `synchronize()`. The request profiler
synchronises once, when a request closes, so the model's asynchronous work is never serialised by timing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch


class Clock(Protocol):
    kind: str

    def mark(self) -> Any: ...

    def synchronize(self) -> None: ...

    def elapsed_ms(self, start: Any, end: Any) -> float: ...


class HostClock:
    """Wall clock of the host; right for CPU work (it is synchronous)."""

    kind = "perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3


class CudaEventClock:
    """CUDA events recorded on the current stream: each mark is timestamped when the GPU reaches it."""

    kind = "cuda_event"

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return float(start.elapsed_time(end))


def make_clock(device: torch.device | str) -> Clock:
    device = torch.device(device)
    return CudaEventClock(device) if device.type == "cuda" else HostClock()


# On a shared 2-core machine two OpenMP threads made every small op stall ~8 ms (a CPU prefill 25x too slow, measured);
# one thread gave a CV of 0.6-1.6 %. So CPU runs use one thread unless told otherwise (docs/profiling.md).
DEFAULT_CPU_THREADS = 1


def default_threads(device: str) -> int | None:
    """The torch thread count a run on `device` uses by default: DEFAULT_CPU_THREADS on CPU, torch's own on a GPU."""
    return DEFAULT_CPU_THREADS if torch.device(device).type == "cpu" else None


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """`torch.set_num_threads(threads)` inside the block (None: unchanged), torch's previous count after it."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_repeats(fn, device: torch.device | str, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of `fn()` for each of `repeats` calls after `warmup` untimed ones (no autograd); on CUDA, events
    around each call and one synchronisation per call."""
    clock = make_clock(device)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        clock.synchronize()
        for _ in range(repeats):
            start = clock.mark()
            fn()
            end = clock.mark()
            clock.synchronize()
            times.append(clock.elapsed_ms(start, end))
    return times


__all__ = [
    "Clock",
    "HostClock",
    "CudaEventClock",
    "make_clock",
    "time_repeats",
    "DEFAULT_CPU_THREADS",
    "default_threads",
    "cpu_threads",
]
