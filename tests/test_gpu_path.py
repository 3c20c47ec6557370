"""What a first GPU run would get wrong, shown on CPU where the fault can be: NVML's device mapping, roofline peaks by
GPU name, where each method's reduction time is attributed, peaks per request, "compiled" only when a graph ran,
host syncs per request, fp16 training's trainable weights, the GPU workflow's sweep."""

from __future__ import annotations

import ast
import inspect
import uuid

import pynvml
import pytest

from vistog_bench.profiling import nvml as nvml_module
from vistog_bench.profiling.nvml import GpuIdentity, identity_from_nvml, match_nvml_index, uuid_text
from vistog_bench.profiling.roofline import gpu_from_device_name


# -- NVML: names that exist, the GPU torch means -----------------------------------------------------------------------
def test_every_nvml_function_nvml_py_calls_exists_in_the_installed_nvidia_ml_py():
    """A name the module lacks raises AttributeError on a GPU only (nvmlDeviceGetHandleByPciBusId_v2 did, and the
    handle silently fell back to torch's index)."""
    tree = ast.parse(inspect.getsource(nvml_module))
    called = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr.startswith("nvml")}
    assert {"nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetPciInfo"} <= called
    assert sorted(name for name in called if not hasattr(pynvml, name)) == []


def _nvml_device(number: int, bus: int) -> tuple[bytes, pynvml.nvmlPciInfo_t]:
    """What nvmlDeviceGetUUID and nvmlDeviceGetPciInfo return for a GPU: the UUID text as bytes ("GPU-" + CUDA's
    8-4-4-4-12 hex) and pynvml's own nvmlPciInfo_t."""
    info = pynvml.nvmlPciInfo_t()
    info.domain, info.bus, info.device = 0, bus, 0
    info.busId = f"00000000:{bus:02X}:00.0".encode()
    return f"GPU-{uuid.UUID(int=0x5A4C0000 + number)}".encode(), info


# four GPUs in physical (NVML) order, as a 4-GPU node lists them
PHYSICAL = [_nvml_device(i, bus) for i, bus in enumerate((0x18, 0x3B, 0x86, 0xAF))]


def _torch_sees(physical: int, *, with_uuid: bool = True) -> GpuIdentity:
    """torch's identity of a visible device that is physical GPU `physical`: CUDA's 16 UUID bytes, PCI ids."""
    raw = uuid.UUID(int=0x5A4C0000 + physical).bytes
    return GpuIdentity(uuid_text(list(raw)) if with_uuid else None, (0, PHYSICAL[physical][1].bus, 0))


def test_a_masked_device_maps_to_its_physical_gpu_by_uuid():
    """CUDA_VISIBLE_DEVICES=2: torch's cuda:0 is physical GPU 2; NVML still numbers it 2 (its index 0 is another
    card, whose energy and clocks the old fallback read)."""
    listed = [identity_from_nvml(text, info) for text, info in PHYSICAL]
    assert match_nvml_index(_torch_sees(2), listed) == (2, "uuid")
    assert match_nvml_index(_torch_sees(3), listed) == (3, "uuid")  # CUDA_VISIBLE_DEVICES=1,3: cuda:1
    assert listed[2].uuid == str(uuid.UUID(int=0x5A4C0002))  # "GPU-" dropped, CUDA's form kept


def test_the_pci_address_stands_in_without_a_uuid_and_ambiguity_decides_nothing():
    listed = [identity_from_nvml(text, info) for text, info in PHYSICAL]
    assert match_nvml_index(_torch_sees(1, with_uuid=False), listed) == (1, "pci")
    mig = GpuIdentity(str(uuid.UUID(int=0xABC)), listed[3].pci)  # a MIG instance: own UUID, its parent's PCI address
    assert match_nvml_index(mig, listed) == (3, "pci")
    found, why = match_nvml_index(_torch_sees(1, with_uuid=False), listed + [listed[1]])
    assert found is None and "no single GPU" in why
    assert match_nvml_index(GpuIdentity(None, (0, 0x99, 0)), listed)[0] is None


def test_uuid_text_reads_both_sides_the_same_way():
    raw = uuid.UUID("5a4c8f2e-1b3d-4c5e-8f70-123456789abc")
    assert uuid_text(list(raw.bytes)) == uuid_text("GPU-5A4C8F2E-1B3D-4C5E-8F70-123456789ABC") == str(raw)
    assert uuid_text("MIG-5a4c8f2e-1b3d-4c5e-8f70-123456789abc") == str(raw)
    assert identity_from_nvml(b"not-a-uuid", None) == GpuIdentity(None, None)
    with pytest.raises(ValueError):
        uuid_text("GPU-1234")


# -- roofline peaks by exact device name -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA GH200 480GB", None),  # 4.0 TB/s, not the H200's 4.8
        ("NVIDIA H200 NVL", None),
        ("NVIDIA H100 PCIe", None),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA A100-SXM4-40GB", None),
        ("", None),
    ],
)
def test_roofline_peaks_match_the_device_name_in_full(device_name, key):
    gpu = gpu_from_device_name(device_name)
    assert (gpu.key if gpu is not None else None) == key
