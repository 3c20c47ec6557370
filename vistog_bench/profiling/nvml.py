"""NVML (nvidia-ml-py): device facts for the manifest and the total-energy counter for joules per request.

Where NVML or CUDA is absent (no driver, a CPU run) every function returns nulls with a reason; nothing raises.
`pynvml.nvmlInit()` raises `NVMLError_LibraryNotFound` on machines without a GPU: that is the common case here.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def _nvml() -> tuple[Any, str | None]:
    """(the pynvml module, initialised) or (None, why not). Initialised once per process."""
    try:
        import pynvml
    except ImportError:
        return None, "NVML not available: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML not available: {exc}"
    except OSError as exc:  # a broken driver install can surface as a loader error
        return None, f"NVML not available: {exc}"
    return pynvml, None


@dataclass(frozen=True)
class GpuIdentity:
    """How a GPU is named whatever the device numbering: its UUID (32 lowercase hex digits in CUDA's 8-4-4-4-12
    form, no "GPU-" prefix) and its PCI address (domain, bus, device). Either may be None where it was not read."""

    uuid: str | None
    pci: tuple[int, int, int] | None


PREFIXES = ("gpu-", "mig-")  # NVML's UUID text names the kind of device first (nvmlDeviceGetUUID)


def uuid_text(raw: bytes | list[int] | str) -> str:
    """A UUID as 8-4-4-4-12 lowercase hex: from CUDA's 16 bytes (torch's `props.uuid.bytes`) or NVML's text
    ("GPU-5a4c...", "MIG-...")."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        text = next((text[len(p) :] for p in PREFIXES if text.startswith(p)), text)
        digits = text.replace("-", "")
    else:
        digits = bytes(raw).hex()
    if len(digits) != 32 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not a UUID: {raw!r}")
    return "-".join(digits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))


def torch_identity(index: int) -> GpuIdentity:
    """What torch's cuda:`index` is (indices count the devices CUDA_VISIBLE_DEVICES leaves visible)."""
    props = torch.cuda.get_device_properties(index)
    raw = getattr(props, "uuid", None)  # torch's _CUuuid; CUDA's cudaDeviceProp.uuid
    return GpuIdentity(
        uuid_text(raw.bytes) if raw is not None else None,
        (props.pci_domain_id, props.pci_bus_id, props.pci_device_id),
    )


def nvml_identity(nvml, handle) -> GpuIdentity:
    """What NVML's `handle` is: nvmlDeviceGetUUID and nvmlDeviceGetPciInfo (each None if NVML cannot say)."""
    try:
        uuid = nvml.nvmlDeviceGetUUID(handle)
    except nvml.NVMLError:
        uuid = None
    try:
        pci = nvml.nvmlDeviceGetPciInfo(handle)
    except nvml.NVMLError:
        pci = None
    return identity_from_nvml(uuid, pci)


def identity_from_nvml(uuid: bytes | str | None, pci_info) -> GpuIdentity:
    """A GpuIdentity from what NVML returns: the UUID text ("GPU-..."), an nvmlPciInfo_t (domain, bus, device)."""
    try:
        text = uuid_text(_decode(uuid)) if uuid is not None else None
    except ValueError:
        text = None
    pci = (int(pci_info.domain), int(pci_info.bus), int(pci_info.device)) if pci_info is not None else None
    return GpuIdentity(text, pci)


def match_nvml_index(target: GpuIdentity, devices: list[GpuIdentity]) -> tuple[int | None, str]:
    """(position in NVML's device list, what matched) of the GPU torch names `target`, or (None, why not).

    NVML numbers every GPU of the machine and ignores CUDA_VISIBLE_DEVICES; torch numbers the visible ones. The UUID
    decides; the PCI address stands in where it matches no UUID (a MIG instance's UUID is its own, its PCI address its
    parent GPU's). A key that names no device, or several, decides nothing."""
    for key in ("uuid", "pci"):
        wanted = getattr(target, key)
        if wanted is None:
            continue
        found = [i for i, device in enumerate(devices) if getattr(device, key) == wanted]
        if len(found) == 1:
            return found[0], key
    return None, f"NVML lists no single GPU with torch's UUID {target.uuid} or PCI address {target.pci}"


def nvml_handle(device: torch.device | str) -> tuple[Any, Any, str | None]:
    """(pynvml, handle, None) for a CUDA device, or (None, None, reason). The handle is the GPU torch calls `device`,
    found by UUID / PCI address among NVML's devices, so a masked CUDA_VISIBLE_DEVICES maps right."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, None, f"device is {device.type}, not an NVIDIA GPU"
    if not torch.cuda.is_available():
        return None, None, "CUDA not available"
    nvml, reason = _nvml()
    if nvml is None:
        return None, None, reason
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as exc:
        return None, None, f"NVML cannot list its GPUs: {exc}"
    found, how = match_nvml_index(torch_identity(index), [nvml_identity(nvml, h) for h in handles])
    if found is None:
        return None, None, f"cuda:{index}: {how}"
    return nvml, handles[found], None


def _query(facts: dict, reasons: dict, key: str, read) -> None:
    try:
        facts[key] = read()
    except Exception as exc:  # NVMLError_NotSupported and friends: one field null, the rest still reported
        facts[key] = None
        reasons[key] = f"NVML: {exc}"


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


GPU_FACTS = (
    "name",
    "driver_version",
    "cuda_driver_version",
    "memory_total_bytes",
    "memory_used_bytes",
    "temperature_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
    "memory_clock_mhz",
    "max_sm_clock_mhz",
    "max_memory_clock_mhz",
    "energy_counter_mj",
)


def device_facts(device: torch.device | str) -> dict[str, Any]:
    """Facts for the run manifest: host (CPU name, cores), torch's view of the device and NVML's (name, driver,
    clocks, temperature, memory, power). Missing facts are None with a reason in `null_reasons`."""
    device = torch.device(device)
    facts: dict[str, Any] = {
        "device": str(device),
        "host_cpu": _cpu_name(),
        "host_cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cuda_version": torch.version.cuda,
        "platform": platform.platform(),
    }
    reasons: dict[str, str] = {}
    nvml, handle, reason = nvml_handle(device)
    if device.type == "cuda" and torch.cuda.is_available():  # the device measured: cuda means the current one
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        facts["torch_device_name"] = props.name
        facts["compute_capability"] = f"{props.major}.{props.minor}"
        identity = torch_identity(index)
        facts["gpu_uuid"], facts["pci_address"] = identity.uuid, identity.pci
    if handle is None:
        for key in GPU_FACTS:
            facts[key] = None
            reasons[key] = reason
        facts["null_reasons"] = reasons
        return facts

    clock = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    _query(facts, reasons, "name", lambda: _decode(nvml.nvmlDeviceGetName(handle)))
    _query(facts, reasons, "driver_version", lambda: _decode(nvml.nvmlSystemGetDriverVersion()))
    _query(facts, reasons, "cuda_driver_version", lambda: nvml.nvmlSystemGetCudaDriverVersion())
    _query(facts, reasons, "memory_total_bytes", lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total))
    _query(facts, reasons, "memory_used_bytes", lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
    _query(facts, reasons, "temperature_c", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    _query(facts, reasons, "power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1e3)
    _query(facts, reasons, "power_limit_w", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3)
    _query(facts, reasons, "sm_clock_mhz", lambda: nvml.nvmlDeviceGetClockInfo(handle, clock[0]))
    _query(facts, reasons, "memory_clock_mhz", lambda: nvml.nvmlDeviceGetClockInfo(handle, clock[1]))
    _query(facts, reasons, "max_sm_clock_mhz", lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, clock[0]))
    _query(facts, reasons, "max_memory_clock_mhz", lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, clock[1]))
    _query(facts, reasons, "energy_counter_mj", lambda: int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
    facts["null_reasons"] = reasons
    return facts


class EnergyMeter:
    """NVML's total-energy counter (millijoules since the driver loaded; Volta and newer).

    The counter is updated by the driver every few tens of milliseconds, so a single short request reads coarse
    values; controlled runs average over repeats. `reason` says why readings are None.
    """

    def __init__(self, device: torch.device | str):
        self._nvml, self._handle, self.reason = nvml_handle(device)
        if self._handle is not None and self.read_mj() is None:
            self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read_mj(self) -> int | None:
        if self._handle is None:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError as exc:
            self.reason = f"NVML total-energy counter not readable: {exc}"
            return None


__all__ = [
    "device_facts",
    "EnergyMeter",
    "GpuIdentity",
    "identity_from_nvml",
    "match_nvml_index",
    "nvml_handle",
    "nvml_identity",
    "torch_identity",
    "uuid_text",
    "GPU_FACTS",
]
