"""Profiling: stage timers (CUDA events / perf_counter) via hooks, FLOPs (analytic + counted), memory, NVML energy.

Light at import: torch is imported, transformers and the model only where used.
"""

from .flops import ArchShape, generate_flops
from .nvml import EnergyMeter, device_facts
from .profiler import Request, RequestProfiler

__all__ = ["RequestProfiler", "Request", "device_facts", "EnergyMeter", "ArchShape", "generate_flops"]
