"""Profiling: stage timers (CUDA events / perf_counter) via hooks, FLOPs (analytic + counted), memory, NVML energy.

Names are imported lazily, so `vistog-bench --help` (which imports `vistog_bench.profiling.cli`) does not load torch.

    RequestProfiler, Request   profiler.py   per-request stage profiling (the adapter's)
    device_facts, EnergyMeter  nvml.py       NVML facts for the manifest, total-energy counter
    ArchShape, generate_flops  flops.py      analytic FLOPs, every formula in one place
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RequestProfiler": "profiler",
    "Request": "profiler",
    "device_facts": "nvml",
    "EnergyMeter": "nvml",
    "ArchShape": "flops",
    "generate_flops": "flops",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
