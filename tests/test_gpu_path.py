"""What a first GPU run would get wrong, shown on CPU where the fault can be: NVML's device mapping, roofline peaks by
GPU name, where each method's reduction time is attributed, peaks per request, "compiled" only when a graph ran,
host syncs per request, fp16 training's trainable weights, the GPU workflow's sweep."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pynvml
import pytest
import torch
import yaml

from vistog_bench.profiling import nvml as nvml_module
from vistog_bench.profiling.nvml import GpuIdentity, identity_from_nvml, match_nvml_index, uuid_text
from vistog_bench.profiling.roofline import gpu_from_device_name
from vistog_bench.reducers.cdpruner import EPSILON, conditional_kernel, greedy_dpp_map
from vistog_bench.reducers.divprune import max_min_diversity
from vistog_bench.reducers.holitom import static_windows, temporal_merge


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


# -- the per-token loops, vectorised: the same selections --------------------------------------------------------------
def _greedy_dpp_map_loop(kernel, keep):
    """cdpruner.greedy_dpp_map as it was, one host read per step (kept here as the reference of the vectorised one)."""
    size = kernel.shape[0]
    rows = kernel.new_zeros(keep, size)
    gains = kernel.diagonal().clone()
    chosen: list[int] = []
    while len(chosen) < keep and float(gains.max()) > EPSILON:
        item, step = int(gains.argmax()), len(chosen)
        chosen.append(item)
        rows[step] = (kernel[item] - rows[:step, item] @ rows[:step]) / gains[item].sqrt()
        gains = gains - rows[step].square()
        gains[chosen] = -torch.inf
    if len(chosen) < keep:
        quality = kernel.diagonal().clone()
        quality[chosen] = -torch.inf
        chosen += quality.topk(keep - len(chosen)).indices.tolist()
    return torch.tensor(chosen, device=kernel.device)


@pytest.mark.parametrize(("width", "keep"), [(64, 1), (64, 16), (64, 64), (32, 100), (512, 128)])
def test_cdpruner_greedy_map_chooses_as_the_host_loop(width, keep):
    """Seeded projected tokens [576, width] and instructions; width 32 < keep 100: the rank runs out and the
    diagonal takes over, in both."""
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        visual, instruction = torch.randn(576, width, generator=generator), torch.randn(7, width, generator=generator)
        kernel = conditional_kernel(visual, instruction)
        assert torch.equal(greedy_dpp_map(kernel, keep), _greedy_dpp_map_loop(kernel, keep))


def _static_windows_loop(similarity, tau, max_window):
    """holitom.static_windows as it was: one host read per window considered (the vectorised one's reference)."""
    frames = similarity.shape[0] + 1
    static = similarity > tau

    def saved(first, last):
        return int(static[first:last].all(dim=0).sum()) * (last - first)

    best, start = [0] * (frames + 1), [0] * (frames + 1)
    for end in range(1, frames + 1):
        best[end], start[end] = best[end - 1], end - 1
        for length in range(2, min(end, max_window) + 1):
            value = best[end - length] + saved(end - length, end - 1)
            if value > best[end]:
                best[end], start[end] = value, end - length
    windows, end = [], frames
    while end > 0:
        windows.append((start[end], end - 1))
        end = start[end]
    return windows[::-1]


def _temporal_merge_loop(frames, tau, max_window, keep_total):
    """holitom.temporal_merge as it was: one host read per static position, one write per merge."""
    count, patches, _ = frames.shape
    kept = torch.ones(count, patches, dtype=torch.bool)
    states = frames.clone()
    if count < 2:
        return kept, states
    normed = torch.nn.functional.normalize(frames.float(), dim=-1)
    similarity = (normed[:-1] * normed[1:]).sum(dim=-1)
    groups = []
    for first, last in _static_windows_loop(similarity, tau, max_window):
        if last == first:
            continue
        window_min = similarity[first:last].min(dim=0).values
        groups += [(float(window_min[p]), first, last, p) for p in (window_min > tau).nonzero().flatten().tolist()]
    surplus = count * patches - keep_total
    for _, first, last, position in sorted(groups, key=lambda g: -g[0]):
        if last - first > surplus:
            continue
        states[first, position] = frames[first : last + 1, position].mean(dim=0)
        kept[first + 1 : last + 1, position] = False
        surplus -= last - first
    return kept, states


def _video(frames: int, patches: int, width: int, seed: int, dtype) -> torch.Tensor:
    """[F, P, D] frames where most positions drift slowly (static) and some change: HoliTom has windows to find."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(patches, width, generator=generator)
    drift = torch.randn(frames, patches, width, generator=generator) * torch.rand(patches, 1, generator=generator)
    return (base + 0.6 * drift.cumsum(dim=0)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("frames", "max_window"), [(1, 8), (2, 8), (6, 3), (12, 8)])
def test_holitom_temporal_merge_merges_as_the_host_loop(dtype, frames, max_window):
    """Same windows, same merges, bit for bit; keep_total from "anything goes" down to a budget the surplus limits."""
    for seed in range(3):
        video = _video(frames, 48, 16, seed, dtype)
        for tau in (0.5, 0.8, 0.95):
            similarity = torch.rand(max(frames - 1, 0), 48, generator=torch.Generator().manual_seed(seed))
            assert static_windows(similarity, tau, max_window) == _static_windows_loop(similarity, tau, max_window)
            for keep_total in (1, frames * 48 // 2, frames * 48 - 5):
                kept, states = temporal_merge(video, tau, max_window, keep_total)
                old_kept, old_states = _temporal_merge_loop(video, tau, max_window, keep_total)
                assert torch.equal(kept, old_kept) and torch.equal(states, old_states)


# -- where a method's reduction time goes; peaks per request -----------------------------------------------------------
SLEEP_S = 0.05  # a sleep in the method's own work: time.sleep waits at least this long, so the bound below is safe


def _profiled(model, method, budget, *, stall=None, allocator=None, **options):
    """One profiled generate of the tiny model under `method`; `stall(model)` installs extra hooks after the
    profiler's own (they run where the method's work runs) and returns their handles."""
    from testers import random_images, tiny_processor

    from vistog_bench.model import build_inputs, llava_prompt
    from vistog_bench.profiling import RequestProfiler
    from vistog_bench.reducers import applied_method, apply_method, tokens_per_image

    apply_method(model, method, budget, **options)
    inputs = build_inputs(
        tiny_processor(), [llava_prompt("what colour ?")], [random_images(1)], tokens_per_image(model)
    )
    profiler = RequestProfiler(model, applied=applied_method(model))
    if allocator is not None:
        profiler.allocator = (allocator.read, allocator.reset)
    with profiler.attached():
        handles = stall(model) if stall is not None else []
        try:
            with profiler.request(method=method, budget=budget, batch_size=1) as request:
                with torch.no_grad():
                    model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        finally:
            for handle in handles:
                handle.remove()
    return request.record


def _sleep_once(*_):
    time.sleep(SLEEP_S)


IN_LLM = [("divprune", 64, {}), ("cdpruner", 64, {}), ("holitom", 64, {}), ("dart", 300, {}), ("pdrop", 300, {})]
IN_LLM += [("sparsevlm", 300, {}), ("fastv", 64, {"fastv_layer": 1})]


@pytest.mark.parametrize(("method", "budget", "options"), IN_LLM)
def test_a_method_inside_the_llm_is_timed_in_its_decoder_layer_hooks(model, method, budget, options):
    """A pre-hook that sleeps on the method's first hooked layer is part of the method's work there: grouping_ms holds
    it, inside the prefill; the vision -> projector gap (empty for these methods) is no longer what is timed."""
    from vistog_bench.reducers import apply_method

    apply_method(model, method, budget, **options)
    first = next(i for i, layer in enumerate(model.model.language_model.layers) if layer._forward_pre_hooks)

    def stall(model):  # after the method's own pre-hooks on that layer: it sleeps where they select
        return [model.model.language_model.layers[first].register_forward_pre_hook(_sleep_once)]

    record = _profiled(model, method, budget, stall=stall, **options)
    stage = record.extra["grouping_stage"]
    assert "inside the LLM" in stage and "after the vision tower" not in stage, stage
    assert record.extra["grouping_layers"][0] == first
    assert record.grouping_ms >= SLEEP_S * 1e3  # the prefill's sleep (decode steps' sleeps are not selection)
    assert record.extra["grouping_in_prefill_ms"] == record.grouping_ms <= record.prefill_ms
    assert record.prefill_ms >= SLEEP_S * 1e3


def test_a_reducer_after_the_vision_tower_and_one_inside_the_llm_both_count(model):
    """vscan reduces after the tower and again inside the LLM: grouping_ms is both parts."""
    record = _profiled(model, "vscan", 64)
    stage = record.extra["grouping_stage"]
    assert "after the vision tower" in stage and "inside the LLM" in stage
    assert record.grouping_ms > record.extra["grouping_in_prefill_ms"] > 0


class _Allocator:
    """What a device allocator's counters report: bytes in use and the peak since the last reset (CUDA's
    max_memory_allocated / reset_peak_memory_stats); the tests allocate in it where work would."""

    def __init__(self):
        self.in_use = self.peak = 1_000

    def allocate(self, size: int) -> None:
        self.in_use += size
        self.peak = max(self.peak, self.in_use)

    def free(self, size: int) -> None:
        self.in_use -= size

    def read(self) -> int:
        return self.peak

    def reset(self) -> None:
        self.peak = self.in_use


def test_the_request_peak_holds_a_reducers_temporaries_between_stages(model):
    """pool's reducer runs between the vision tower and the projector: 50 kB of temporaries there are in the
    request's peak, in no stage's; the prefill's own 5 kB are in its stage peak."""
    allocator = _Allocator()

    def stall(model):
        def temporaries(*_):
            allocator.allocate(50_000)
            allocator.free(50_000)

        def prefill_work(*_):
            allocator.allocate(5_000)
            allocator.free(5_000)

        return [  # after the profiler's own hooks: the tower's span has closed, the LLM's step has opened
            model.model.vision_tower.register_forward_hook(temporaries),
            model.model.language_model.register_forward_pre_hook(prefill_work),
        ]

    record = _profiled(model, "pool", 64, stall=stall, allocator=allocator)
    peaks = record.peak_memory_bytes
    assert peaks["total"] == 51_000
    assert peaks["prefill"] == 6_000 and peaks["vision"] == peaks["projector"] == 1_000
    assert "peak_memory_bytes" not in record.null_reasons


def _max_min_diversity_loop(features, keep, upcast=False):
    """divprune.max_min_diversity as it was: one host read per kept token (the vectorised one's reference)."""
    features = features.float() if upcast else features
    normed = features / features.norm(dim=1, keepdim=True)
    distance = 1.0 - normed @ normed.T
    nearest = distance.topk(2, dim=0, largest=False).values[1]
    chosen = [int(nearest.argmax())]
    closest = distance[chosen[0]].clone()
    for _ in range(keep - 1):
        chosen.append(int(closest.argmax()))
        closest = torch.minimum(closest, distance[chosen[-1]])
    return torch.tensor(chosen, device=features.device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("upcast", [False, True])
def test_divprune_chooses_as_the_host_loop(dtype, upcast):
    """Seeded projected tokens [576, 64] in each dtype, distances in the model's dtype or float32; repeated tokens
    make ties (argmax takes the lowest index in both)."""
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(576, 64, generator=generator)
        features[100:140] = features[0]  # 40 copies of one token: distances tie
        features = features.to(dtype)
        for keep in (1, 64, 300):
            expected = _max_min_diversity_loop(features, keep, upcast)
            assert torch.equal(max_min_diversity(features, keep, upcast), expected)


# -- host syncs per request, whatever the budget -----------------------------------------------------------------------
def _host_syncs(model, processor, method: str, budget: int, frames: int = 1) -> int:
    """Host syncs of one generate (batch 2, 2 new tokens) under `method`; `frames` copies of one image per sample make
    every position static for HoliTom (the most merges)."""
    from testers import random_images

    from vistog_bench.model import build_inputs, llava_prompt
    from vistog_bench.profiling.syncs import HostSyncs
    from vistog_bench.reducers import apply_method, remove_method, tokens_per_image

    remove_method(model)
    if method != "none":
        apply_method(model, method, budget)
    images = [random_images(1, seed=7) * frames] * 2
    inputs = build_inputs(processor, [llava_prompt("describe the image", frames)] * 2, images, tokens_per_image(model))
    with torch.no_grad(), HostSyncs() as syncs:
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    remove_method(model)
    return syncs.total


@pytest.mark.parametrize(("method", "frames"), [("divprune", 1), ("cdpruner", 1), ("holitom", 4)])
def test_host_syncs_per_request_do_not_grow_with_the_budget(model, processor, method, frames):
    """The per-token loops read the host once or twice per kept token (8 (K + 1) + 3 syncs for DivPrune at batch 8);
    now a request's count is the same at 32 and 256 kept tokens, within SYNCS_PER_SAMPLE per sample of the stock
    model's."""
    from vistog_bench.selftest import SYNCS_PER_SAMPLE

    stock = _host_syncs(model, processor, "none", 576, frames)
    small, large = (_host_syncs(model, processor, method, budget, frames) for budget in (32, 256))
    assert small == large
    assert stock < large <= stock + 2 * SYNCS_PER_SAMPLE


def test_host_syncs_sees_every_kind_of_read():
    """Each read a GPU would wait on is counted on CPU: item / int / bool, a mask index, nonzero, tolist, a tensor
    made from host data on a device; device-side work is not."""
    from vistog_bench.profiling.syncs import HostSyncs

    x = torch.arange(10.0)
    with HostSyncs() as syncs:
        y = (x * 2).argmax()  # device-side: nothing
        z = x.index_select(0, y.view(1))
    assert syncs.total == 0 and z.item() == 9.0
    with HostSyncs() as syncs:
        x.max().item(), int(x.argmax()), bool(x.sum() > 0), x[x > 3], (x > 3).nonzero(), x.tolist()
        torch.tensor([1, 2], device=x.device)
    assert syncs.by_kind == {
        "_local_scalar_dense": 3,
        "index by mask": 1,
        "nonzero": 1,
        "tolist()": 1,
        "tensor(..., device=)": 1,
    }


# -- "compiled" only when a graph ran ----------------------------------------------------------------------------------
def test_compiled_rows_fail_with_the_reason_when_transformers_skips_compilation():
    """On CPU transformers skips compilation (it compiles on GPU-like devices) and runs eagerly: the record says
    eager with why, and the selftest's compiled row fails naming it instead of passing as compiled."""
    from vistog_bench.selftest import plan_for, run_controlled

    plan = dataclasses.replace(plan_for("cpu"), budgets=(64,), batch_sizes=(1,), warmup=0, repeats=1)
    [row] = run_controlled(plan, "compiled")
    assert not row.ok and row.verdict == "FAILED"
    assert any("no compiled graph ran" in p and "skipped compilation" in p for p in row.problems), row.problems
    assert row.figures["execution_path"] == "eager"
    assert row.figures["compile"]["ran"] is False and row.figures["compile"]["decode_hooks_fired"] > 0


# -- the GPU selftest's verdicts, on figures of the shape the GPU checks print -----------------------------------------
def _controlled(**changes):
    from vistog_bench.results import ProfileRecord

    base = ProfileRecord(
        kind="controlled", method="none", budget=576, batch_size=1, device="cuda:0", dtype="bfloat16", total_ms=500.0
    )
    return dataclasses.replace(base, **changes)


def test_power_between_idle_and_the_limit():
    """350 J over 0.5 s is 700 W: above a 700 W limit's slack no, above 600's yes; 30 J is 60 W, below 80 W idle."""
    from vistog_bench.selftest import check_power

    assert check_power(_controlled(energy_j=175.0), idle_w=80.0, limit_w=700.0) == []  # 350 W
    assert "above the 300.0 W limit" in check_power(_controlled(energy_j=175.0), 80.0, 300.0)[0]
    assert "below the idle 80.0 W" in check_power(_controlled(energy_j=30.0), 80.0, 700.0)[0]
    assert check_power(_controlled(energy_j=None), 80.0, 700.0) == []  # a missing reading is check_controlled's


def test_compiled_must_decode_faster_than_eager():
    from vistog_bench.selftest import check_compiled_speed

    eager = _controlled(decode_per_token_ms=25.0)
    assert check_compiled_speed(_controlled(decode_per_token_ms=12.0), eager) == []
    assert "not below eager's" in check_compiled_speed(_controlled(decode_per_token_ms=25.0), eager)[0]


def test_a_prefill_peak_below_the_weights_is_a_failure():
    from vistog_bench.selftest import check_controlled

    record = _controlled(peak_memory_bytes={"vision": 10, "prefill": 90, "total": 95}, weight_bytes=100)
    assert any("below the weights'" in p for p in check_controlled(record, cuda=True))


def test_identity_launch_training_and_method_verdicts():
    from vistog_bench.selftest import SYNCS_PER_SAMPLE, check_identity, check_launch, check_method, check_training

    same = {"torch_uuid": "a", "nvml_uuid": "a", "torch_pci": [0, 59, 0], "nvml_pci": [0, 59, 0], "nvml_reason": None}
    assert check_identity(same) == []
    assert "is not torch's" in check_identity({**same, "nvml_uuid": "b", "nvml_pci": [0, 24, 0]})[0]
    assert "no NVML handle" in check_identity({**same, "nvml_reason": "NVML lists no single GPU"})[0]
    assert check_launch([{"device": "cuda:0"}, {"device": "cuda:1"}], 2) == []
    assert "share a device" in check_launch([{"device": "cuda:0"}, {"device": "cuda:0"}], 2)[0]
    assert "1 of 2" in check_launch([{"device": "cuda:0"}], 2)[0]
    run = {"exit_code": 0, "steps": 2, "processes": 2, "first_loss": 4.1, "last_loss": 3.9}
    assert check_training(run, 2) == []
    assert "losses" in check_training({**run, "last_loss": float("nan")}, 2)[0]
    assert "exit 1" in check_training({"exit_code": 1, "stderr_tail": "ValueError: ..."}, 2)[0]
    method = {"new_tokens": 4, "finite_logits": True, "identical_repeat": True, "host_syncs": 20}
    method["host_syncs_by_kind"] = {}
    assert check_method(dict(method), stock_syncs=17, batch=1, new_tokens=4) == []
    looped = {**method, "host_syncs": 17 + 2 * (SYNCS_PER_SAMPLE + 1)}
    assert "host syncs per sample" in check_method(looped, stock_syncs=17, batch=2, new_tokens=4)[0]
    assert "other tokens" in check_method({**method, "identical_repeat": False}, 17, 1, 4)[0]


# -- training: fp16 masters, ZeRO-3 counts -----------------------------------------------------------------------------
def _unscale_a_projector_step(model) -> None:
    """One step as accelerate's fp16 path takes it on a GPU (autocast in float16, torch.amp.GradScaler), on CPU: a
    loss through the trainable projector, scaled, backward, then unscale_ (where float16 gradients raise)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scaler = torch.optim.AdamW(params), torch.amp.GradScaler("cpu")
    features = torch.randn(1, 4, model.config.vision_config.hidden_size, dtype=torch.float16)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model.model.multi_modal_projector(features).float().square().mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)


def test_fp16_mixed_precision_keeps_the_trainable_weights_in_float32():
    """--dtype float16 --mixed-precision fp16: the weights that train are float32 (the grad scaler refuses float16
    gradients: shown first without the cast), the frozen ones float16."""
    from accelerate.utils import DistributedType
    from testers import tiny_llava

    from vistog_bench.train.config import TrainConfig
    from vistog_bench.train.loop import set_parameter_dtypes
    from vistog_bench.train.stages import set_trainable

    config = TrainConfig(stage="llava", model="unused", data="unused", output_dir="unused", train_llm=False)
    loaded = set_trainable(tiny_llava().half(), config)
    with pytest.raises(ValueError, match="unscale FP16 gradients"):
        _unscale_a_projector_step(loaded)
    model = set_trainable(tiny_llava().half(), config)
    set_parameter_dtypes(model, "fp16", DistributedType.NO)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}
    _unscale_a_projector_step(model)


def test_fp16_mixed_precision_on_a_cpu_is_refused_in_one_line():
    """accelerate applies no autocast and no grad scaler on a CPU: fp16 there would train float16 weights unscaled."""
    from vistog_bench.errors import UsageError
    from vistog_bench.train.config import TrainConfig
    from vistog_bench.train.loop import make_accelerator

    config = TrainConfig(stage="llava", model="m", data="d", output_dir="o", mixed_precision="fp16")
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        make_accelerator(config)


def test_zero3_parameters_are_counted_from_their_partitions():
    """ZeRO-3 leaves each parameter an empty placeholder with its size in ds_numel and this rank's slice in
    ds_tensor (deepspeed/runtime/zero/partition_parameters.py: `_convert_to_deepspeed_param`, `_partition_param`);
    built that way here for rank 0 of 2, the log counts the model's elements and this rank's share, not 0."""
    from vistog_bench.train.loop import parameters_held, parameters_total

    module = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    full = sum(p.numel() for p in module.parameters())  # 35 + 5 + 15 + 3 = 58
    for parameter in module.parameters():
        share = -(-parameter.numel() // 2)  # ceil: the padded partition of rank 0
        parameter.ds_numel, parameter.ds_shape = parameter.numel(), parameter.shape
        parameter.ds_tensor = parameter.data.flatten()[:share].clone()
        parameter.data = torch.empty(0, dtype=parameter.dtype)
    assert parameters_total(module) == full
    assert parameters_held(module) == 18 + 3 + 8 + 2  # ceil halves of 35, 5, 15, 3


# -- the GPU workflow's own command lines, on the embedded tiny checkpoints --------------------------------------------
WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "gpu.yml"


def _workflow_env(job: dict) -> dict[str, str]:
    """The job's env as GitHub gives it with no variable or input set: `${{ a || b || 'default' }}` is 'default',
    `${{ vars.X }}` is empty."""
    env = {}
    for key, value in job["env"].items():
        text = str(value)
        if text.startswith("${{"):
            quoted = re.findall(r"'([^']*)'", text)
            text = quoted[-1] if quoted else ""
        env[key] = text
    return env


@pytest.mark.slow
def test_the_gpu_workflows_defaults_sweep_a_full_budget_cell_and_check_its_speedup(tmp_path):
    """The workflow's sweep, run-folder and regression-check steps run as written (bash, its env defaults), with the
    embedded tiny LLaVA and VisToG-16 as the two checkpoints and the synthetic task for the GPU's tasks: the defaults
    form a sweep (none at the full budget, vistog at its N) and the check compares a speedup."""
    from vistog_bench import demo

    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["sweep-and-check"]
    steps = {step.get("name"): step for step in job["steps"]}
    github_env = tmp_path / "github_env"
    github_env.touch()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        **_workflow_env(job),
        # what "Resolve cached weights and data" writes to GITHUB_ENV, pointed at the stand-ins
        "VISTOG_MODEL_DIR": str(demo.checkpoint_for_budget(None)),
        "VISTOG_VISTOG_DIR": str(demo.checkpoint_for_budget(16)),
        "TASKS": "shapes_vqa",  # the GPU's tasks need their datasets; the synthetic task ships with the package
        "LIMIT": "2",
        "GITHUB_ENV": str(github_env),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    assert env["BUDGETS"] == "" and env["METHOD"] == "vistog"  # the defaults under test

    def step(name: str, **extra) -> subprocess.CompletedProcess:
        """A step's script as GitHub runs it, with what earlier steps wrote to GITHUB_ENV."""
        command = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", steps[name]["run"]]
        written = dict(line.split("=", 1) for line in github_env.read_text().splitlines())
        return subprocess.run(
            command, cwd=tmp_path, env={**env, **written, **extra}, capture_output=True, text=True, timeout=900
        )

    sweep = step("Real-checkpoint sweep")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    found = step("Find the run folder")
    assert found.returncode == 0, found.stderr[-2000:]
    run_dir = dict(line.split("=", 1) for line in github_env.read_text().splitlines())["RUN_DIR"]
    metrics = json.loads((tmp_path / run_dir / "metrics.json").read_text())
    cells = {(c["method"], c["budget"]) for c in metrics if c["status"] == "ok"}
    assert cells == {("none", demo.FULL_BUDGET), ("vistog", 16)}
    baseline = subprocess.run(
        ["vistog-bench", "baseline", "update", run_dir, "--name", "gpu-stand-in", "--out-dir", "baselines"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert baseline.returncode == 0, baseline.stderr[-2000:]
    tolerances = str(Path(__file__).resolve().parents[1] / env["TOLERANCES"])
    check = step("Regression check", BASELINE="baselines/gpu-stand-in.json", TOLERANCES=tolerances)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    summary = (tmp_path / env["CHECK_OUT"] / "summary.md").read_text()
    assert re.search(r"\| vistog +\| 16 +\| speedup/total_ms", summary), summary  # against the none cell
