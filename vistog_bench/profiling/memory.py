"""Memory: process peak RSS (CPU), KV-cache bytes (computed from the config, measured from a generate cache) and
weight bytes (from parameters, or from a weightless meta-device model built from a config).

Peak RSS: Linux keeps the high-water mark in /proc/self/status (VmHWM); writing "5" to /proc/self/clear_refs resets
it, so a request's peak is its own, not the process's since start-up. Where that is not allowed the peak is the
process's since start-up, and a request record's `extra.peak_rss_scope` says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .flops import ArchShape

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class _ProcSelfFile:
    """A /proc/self file kept open. Opening one right after a generate costs more than the read or write itself
    (0.02-0.1 ms each on the tiny CPU model, measured; a request opens two), so the descriptor stays open; it is
    reopened in a forked child, where /proc/self would still name the parent. None where it cannot be opened."""

    def __init__(self, path: Path, flags: int) -> None:
        self.path, self.flags = path, flags
        self._pid: int | None = None
        self._fd: int | None = None

    def fd(self) -> int | None:
        pid = os.getpid()
        if self._pid != pid:
            self._pid = pid
            try:
                self._fd = os.open(self.path, self.flags | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = None
        return self._fd


_CLEAR_REFS = _ProcSelfFile(CLEAR_REFS, os.O_WRONLY)
_STATUS = _ProcSelfFile(STATUS, os.O_RDONLY)


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark; False where the kernel does not allow it."""
    fd = _CLEAR_REFS.fd()
    if fd is None:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM of this process in bytes (None off Linux)."""
    fd = _STATUS.fd()
    if fd is None:
        return None
    try:
        status = os.pread(fd, 1 << 16, 0)  # the kernel writes the file afresh for every read from offset 0
    except OSError:
        return None
    start = status.find(b"VmHWM:")
    if start < 0:
        return None
    return int(status[start + 6 : status.index(b"\n", start)].split()[0]) * 1024


# -- KV cache --------------------------------------------------------------------------------------------------------
def kv_cache_bytes(shape: ArchShape, batch: int, tokens: int, element_bytes: int) -> int:
    """Keys and values of every layer for `tokens` positions: 2 * L * B * tokens * Dkv * bytes."""
    return 2 * shape.layers * batch * tokens * shape.kv_width * element_bytes


def generate_kv_tokens(prompt_tokens: int, output_tokens: int) -> int:
    """Positions cached after a generate: the prompt and every generated token but the last (never fed back)."""
    return prompt_tokens + max(output_tokens - 1, 0)


def measured_cache_bytes(cache) -> int | None:
    """Bytes held by a transformers Cache's key/value tensors (DynamicCache, StaticCache); None if not a cache.

    A static cache is allocated at its maximum length, so its measured bytes exceed what the tokens need."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    total = 0
    for layer in layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


# -- weights ---------------------------------------------------------------------------------------------------------
def module_bytes(module: nn.Module, element_bytes: int | None = None) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once); `element_bytes` overrides their dtype."""
    seen: set[int] = set()
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * (element_bytes if element_bytes is not None else tensor.element_size())
    return total


def meta_model(config):
    """The VisToG model of `config` on the meta device: shapes, no weights, no memory."""
    from vistog_bench.model import VisToGForConditionalGeneration

    with torch.device("meta"):
        return VisToGForConditionalGeneration(config)


def stage_weight_bytes(model, element_bytes: int | None = None) -> dict[str, int]:
    """Weight bytes each stage reads per forward: vision (the layers run), grouping, projector, llm (decoder layers,
    norm and lm_head; the embedding table is looked up, not streamed), plus `embedding` and `total` (all weights)."""
    inner = model.model
    tower = inner.vision_tower
    layers_run = ArchShape.from_config(model.config).vision_layers_run
    vision = module_bytes(tower.embeddings, element_bytes) + module_bytes(tower.pre_layrnorm, element_bytes)
    vision += sum(module_bytes(layer, element_bytes) for layer in tower.encoder.layers[:layers_run])
    if getattr(tower, "semantic_tokens", None) is not None:
        vision += tower.semantic_tokens.numel() * (element_bytes or tower.semantic_tokens.element_size())
    language_model = inner.language_model
    embedding = module_bytes(language_model.get_input_embeddings(), element_bytes)
    llm = module_bytes(language_model, element_bytes) - embedding + module_bytes(model.lm_head, element_bytes)
    return {
        "vision": vision,
        "grouping": module_bytes(inner.grouping, element_bytes) if inner.grouping is not None else 0,
        "projector": module_bytes(inner.multi_modal_projector, element_bytes),
        "llm": llm,
        "embedding": embedding,
        "total": module_bytes(model, element_bytes),
    }


__all__ = [
    "DTYPE_BYTES",
    "reset_peak_rss",
    "peak_rss_bytes",
    "kv_cache_bytes",
    "generate_kv_tokens",
    "measured_cache_bytes",
    "module_bytes",
    "meta_model",
    "stage_weight_bytes",
]
