"""The floating-point types a model may run in: one table, by name (what `--dtype` takes and records say).

Kept free of torch at import, so argument parsers (`--help`) can offer the names without loading it.
"""

from __future__ import annotations

from .errors import UsageError

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str):
    """The torch dtype of a name in DTYPE_NAMES; UsageError naming the allowed ones otherwise."""
    import torch

    if name not in DTYPE_NAMES:
        raise UsageError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """`torch.bfloat16` -> "bfloat16" (any torch dtype, listed or not)."""
    return str(dtype).removeprefix("torch.")


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype named in DTYPE_NAMES."""
    return torch_dtype(name).itemsize


__all__ = ["DTYPE_NAMES", "torch_dtype", "dtype_name", "dtype_bytes"]
