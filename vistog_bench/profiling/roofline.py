"""Roofline floors per stage for named GPUs, in the spirit of LLM-Viewer: a stage cannot run faster than its FLOPs
at the GPU's peak nor than its bytes at the memory bandwidth.

    floor = max(FLOPs / peak FLOP/s, bytes / bandwidth)

Bytes are a lower bound on traffic: the weights the stage reads once per forward plus the KV cache it writes
(prefill) or reads (each decode step); activations are left out. Peaks are in gpus.json with their datasheet source.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UsageError
from . import flops as F
from .memory import kv_cache_bytes

GPU_TABLE = Path(__file__).with_name("gpus.json")


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    peak_flops: dict[str, float]
    memory_bandwidth_bytes_per_s: float
    memory_bytes: float
    source: str


@lru_cache(maxsize=1)
def gpu_table() -> dict[str, GPU]:
    data = json.loads(GPU_TABLE.read_text(encoding="utf-8"))
    return {
        key: GPU(
            key,
            entry["name"],
            entry["peak_flops"],
            entry["memory_bandwidth_bytes_per_s"],
            entry["memory_bytes"],
            entry["source"],
        )
        for key, entry in data.items()
        if not key.startswith("_")
    }


def _aliases() -> dict[str, str]:
    data = json.loads(GPU_TABLE.read_text(encoding="utf-8"))
    names = {}
    for key, entry in data.items():
        if key.startswith("_"):
            continue
        names[key] = key
        for alias in entry.get("aliases", []):
            names[alias] = key
    return names


def get_gpu(name: str) -> GPU:
    """A GPU by key or alias (case-insensitive); unknown names raise UsageError naming the known ones."""
    aliases = _aliases()
    key = aliases.get(name.strip().lower())
    if key is None:
        near = difflib.get_close_matches(name.lower(), aliases, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown GPU {name!r}{hint}; known: {', '.join(sorted(aliases))}")
    return gpu_table()[key]


def gpu_from_device_name(device_name: str | None) -> GPU | None:
    """The table entry whose `device_names` hold this name as torch / NVML print it ("NVIDIA H100 80GB HBM3"),
    compared in full (case and spacing aside): "NVIDIA GH200 480GB" is no H200, "NVIDIA H100 PCIe" no H100 SXM."""
    if not device_name:
        return None
    wanted = _name_key(device_name)
    data = json.loads(GPU_TABLE.read_text(encoding="utf-8"))
    for key, entry in data.items():
        if not key.startswith("_") and any(_name_key(name) == wanted for name in entry.get("device_names", [])):
            return gpu_table()[key]
    return None


def _name_key(name: str) -> str:
    return " ".join(name.upper().split())


def stage_bytes(
    shape: F.ArchShape,
    weights: dict[str, int],
    *,
    budget: int,
    batch_size: int,
    text_tokens: int,
    output_tokens: int,
    element_bytes: int,
) -> dict[str, float]:
    """Minimum bytes moved per stage for one generate (weights once per forward, KV written / read)."""
    prompt = budget + text_tokens
    decode = 0.0
    for i in range(1, output_tokens):
        decode += weights["llm"] + kv_cache_bytes(shape, batch_size, prompt + i, element_bytes)
    return {
        "vision": float(weights["vision"]),
        "grouping": float(weights["grouping"]) if budget != shape.num_patches else 0.0,
        "projector": float(weights["projector"]),
        "prefill": float(weights["llm"] + kv_cache_bytes(shape, batch_size, prompt, element_bytes)),
        "decode": decode,
    }


def floors(stage_flops: dict[str, float], stage_bytes_: dict[str, float], gpu: GPU, dtype: str) -> dict[str, dict]:
    """{stage: {"floor_ms", "compute_ms", "memory_ms", "bound", "intensity"}} (intensity in FLOPs per byte)."""
    if dtype not in gpu.peak_flops:
        raise UsageError(f"no peak for {dtype} on {gpu.key}; known: {', '.join(gpu.peak_flops)}")
    peak = gpu.peak_flops[dtype]
    rows = {}
    for stage, flops in stage_flops.items():
        if stage == "total":
            continue
        moved = stage_bytes_.get(stage, 0.0)
        compute_ms = flops / peak * 1e3
        memory_ms = moved / gpu.memory_bandwidth_bytes_per_s * 1e3
        rows[stage] = {
            "floor_ms": max(compute_ms, memory_ms),
            "compute_ms": compute_ms,
            "memory_ms": memory_ms,
            "bound": "compute" if compute_ms >= memory_ms else "memory",
            "intensity": flops / moved if moved else None,
        }
    return rows


__all__ = ["GPU", "gpu_table", "get_gpu", "gpu_from_device_name", "stage_bytes", "floors"]
