"""Host-device synchronisations and attention kernels of a block of work, seen the same way on CPU and on a GPU.

    with HostSyncs() as syncs:
        model.generate(**inputs)
    syncs.total, syncs.by_kind, syncs.attention_kernels

On a GPU the host waits for the device each time it reads a value the device computed: a request that does so once
per kept token times host latency, not the kernels. `HostSyncs` counts those reads, so a CPU run shows what a GPU run
would pay:
  * dispatcher ops (a TorchDispatchMode) that hand a value to the host: `_local_scalar_dense` (`item()`, `int()`,
    `float()`, `bool()`, `if tensor:`), ops whose output size depends on values (`nonzero`, `masked_select`, `unique`,
    indexing by a boolean mask, `repeat_interleave` without `output_size`) and blocking copies between host and
    device memory, either way (torch waits for the stream after a blocking copy to the device too);
  * calls that reach no dispatcher op on a CPU tensor (a TorchFunctionMode): `tolist()`, `numpy()` and `cpu()`, and
    `torch.tensor(data, device=...)` / `torch.as_tensor(data, device=...)` from host data; on a GPU each is a blocking
    copy. On CPU this also counts tensors that would stay on the host in a GPU run: the count is an upper bound there.
On CUDA, `cuda_sync_warnings` adds CUDA's own account (`torch.cuda.set_sync_debug_mode("warn")`: one warning per
synchronising call), which also sees what no op shows (a stream or device synchronize).

`attention_kernels` names the scaled-dot-product kernels that ran (flash, memory-efficient, cuDNN, CPU flash; math
decomposes into matmuls and names none). Not for compiled regions: the modes stay out of torch.compile's way.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# ops that read a device value on the host, or whose output size needs one
READ_OPS = {
    "aten._local_scalar_dense",
    "aten.nonzero",
    "aten.argwhere",
    "aten.masked_select",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.equal",
    "aten.is_nonzero",
}
MASK_INDEXED = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}
COPIES = {"aten._to_copy", "aten.copy_"}
HOST_READS = {"tolist", "numpy", "cpu"}  # Tensor methods that reach no dispatcher op on a CPU tensor
FROM_HOST = {"tensor", "as_tensor"}  # factories that copy host data to `device`
ATTENTION_PREFIXES = ("aten._scaled_dot_product", "aten._flash_attention", "aten._efficient_attention")


def _packet(func) -> str:
    return f"aten.{func._schema.name.split('::', 1)[1]}" if hasattr(func, "_schema") else str(func)


def _is_mask(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in (torch.bool, torch.uint8)


def _blocking_copy(func_name: str, args, kwargs) -> str | None:
    """ "device-to-host" / "host-to-device" for a copy that makes the host wait, else None."""
    if func_name == "aten._to_copy":
        target = kwargs.get("device")
        source, destination = args[0].device, torch.device(target) if target is not None else args[0].device
        blocking = not kwargs.get("non_blocking", False)
    else:
        source, destination = args[1].device, args[0].device
        blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    if source.type == "cpu" and destination.type != "cpu":
        return "host-to-device copy" if blocking else None
    if source.type != "cpu" and destination.type == "cpu":
        return "device-to-host copy"
    return None


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: HostSyncs):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _packet(func)
        if name in READ_OPS:
            self.owner.count(name.removeprefix("aten."))
        elif name in MASK_INDEXED and any(_is_mask(i) for i in (args[1] if len(args) > 1 else ()) if i is not None):
            self.owner.count(f"{name.removeprefix('aten.')} by mask")
        elif name == "aten.repeat_interleave" and kwargs.get("output_size") is None and len(args) == 1:
            self.owner.count("repeat_interleave")
        elif name in COPIES and (copy := _blocking_copy(name, args, kwargs)) is not None:
            self.owner.count(copy)
        if name.startswith(ATTENTION_PREFIXES):
            self.owner.attention_kernels[name.removeprefix("aten.")] += 1
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, owner: HostSyncs):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
            self.owner.count(f"{name}()")
        elif name in FROM_HOST and kwargs.get("device") is not None and not isinstance(args[0], torch.Tensor):
            self.owner.count(f"{name}(..., device=)")
        return func(*args, **kwargs)


class HostSyncs:
    """Counts host-device synchronisations (and attention kernels) inside a `with` block; see the module docstring."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.by_kind: Counter[str] = Counter()
        self.attention_kernels: Counter[str] = Counter()
        self.cuda_sync_warnings: int | None = None
        self._modes: list = []

    def count(self, kind: str) -> None:
        self.by_kind[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def __enter__(self) -> HostSyncs:
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if self._cuda:
            self._previous_debug = torch.cuda.get_sync_debug_mode()
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
        if self._cuda:
            torch.cuda.set_sync_debug_mode(self._previous_debug)
            self.cuda_sync_warnings = sum("synchroniz" in str(w.message) for w in self._caught)
            self._warnings.__exit__(*exc)

    def figures(self) -> dict:
        """What a record or a selftest row keeps: the total, by kind, CUDA's own count, the attention kernels."""
        return {
            "host_syncs": self.total,
            "host_syncs_by_kind": dict(self.by_kind),
            "cuda_sync_warnings": self.cuda_sync_warnings,
            "attention_kernels": dict(self.attention_kernels),
        }


__all__ = ["HostSyncs"]
