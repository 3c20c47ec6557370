"""Controlled measurement (`vistog-bench profile`): a fixed synthetic prompt and image, forced output length,
warm-up excluded, p50 / p90 / p95 / p99 / stdev / CV per stage for every (budget, batch size, new tokens) cell.

The protocol's defaults are the anchors': optimum-benchmark's inference scenario (>= 10 warm-up runs, then at least
10 iterations *and* at least 10 s of them, forced output length, CUDA events with a synchronize per run,
p50 / p90 / p95 / p99 + stdev) and vLLM's `benchmarks/benchmark_latency.py` (10 warm-up, 30 iterations): 10 warm-up
runs, 30 repeats, 10 s at least. CPU threads are fixed (`threads`, 1 on CPU by default; see docs/profiling.md).

Models per budget. budget == P (576) is stock LLaVA (VisToG off, method "none"); any other budget is VisToG with
N = budget (method "vistog"):
  * `--shape NAME`: one random-weight LLaVA of that shape; each budget wraps it with
    `VisToGForConditionalGeneration.from_llava` (fresh random semantic tokens + grouping layer, shared weights).
  * `--model PATH`, a stock LLaVA checkpoint: the same, on the checkpoint's weights. Budgets other than 576 get fresh
    (untrained) VisToG parts: the timing, FLOPs and memory are those of a trained VisToG model of that budget (same
    shapes, same kernels), the outputs are not. Records say so in extra["vistog_parts"].
  * `--model PATH`, a VisToG checkpoint: only its own budget N can be measured.
Timings with random weights are valid (the same kernels run whatever the values); output length is forced by
`min_new_tokens = max_new_tokens`, so EOS never ends a run early.

`analytic_records` needs no weights: configs only (the meta device for weight bytes).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList

from ..dtypes import dtype_bytes, torch_dtype
from ..errors import UsageError
from ..results import STAGES, ProfileRecord
from . import flops as F
from .counting import MISMATCH_TOLERANCE, mismatches
from .memory import generate_kv_tokens, kv_cache_bytes, meta_model, stage_weight_bytes
from .profiler import RequestProfiler
from .roofline import floors, get_gpu, gpu_from_device_name, stage_bytes
from .stats import summarize
from .timers import cpu_threads

# Stage fields timed per request (results.STAGES, plus the derived TTFT, decode per token and the total).
TIMED_FIELDS = (*STAGES[:5], "ttft", "decode", "decode_per_token", "total")
# Readings of a second clock per request (record.extra), each with the stage it cross-checks: the host's perf_counter
# over the whole request (total), and the first token's time by the logits processor (ttft). Summarized beside the
# stage fields, with the per-request gap between the two clocks: both read the same request, so a busy machine moves
# them together while it spreads their medians apart.
SECOND_CLOCKS = {"host_total": "total", "ttft_logits_processor": "ttft"}
# Where a LLaVA-NeXT / OneVision / Qwen2.5-VL checkpoint is measured instead (their counts depend on the image)
FAMILY_ROUTE = (
    "its request timings come from `vistog-bench run --model ...` (profile.jsonl), its FLOPs from "
    "`vistog-bench profile --shape llava-next-7b|llava-onevision-7b|qwen2.5-vl-7b --analytic`"
)
# The protocol's defaults (see the module docstring for their sources).
DEFAULT_WARMUP, DEFAULT_REPEATS, DEFAULT_MIN_DURATION_S = 10, 30, 10.0


@dataclass(frozen=True)
class ProfileSettings:
    """One `vistog-bench profile` invocation, validated by the CLI."""

    model_path: str | None
    shape: str | None
    budgets: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    new_tokens: tuple[int, ...]
    text_tokens: int = 64  # prompt text tokens per prompt, BOS and template included
    warmup: int = DEFAULT_WARMUP
    repeats: int = DEFAULT_REPEATS  # at least; more until min_duration_s of repeats have run
    min_duration_s: float = DEFAULT_MIN_DURATION_S
    threads: int | None = None  # torch CPU threads (None: left as torch set them)
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    count_flops: bool = True  # one FlopCounterMode pass per cell, in the first warm-up (not timed)
    gpus: tuple[str, ...] = ("h100-sxm",)  # roofline floors for --analytic
    seed: int = 0

    @property
    def path(self) -> str:
        return "compiled" if self.compile else "eager"


# -- configs ---------------------------------------------------------------------------------------------------------
def base_config(settings: ProfileSettings):
    """The VisToGConfig of the model or shape as it is (a stock checkpoint: VisToG off)."""
    from vistog_bench.model import VisToGConfig
    from vistog_bench.model.families import find_family
    from vistog_bench.model.loading import load_config
    from vistog_bench.model.presets import preset_config

    if settings.shape is not None:
        return preset_config(settings.shape)
    config = load_config(settings.model_path)  # refuses a checkpoint that asks to run its own code
    family = find_family(config.model_type)
    if not (family and family.controlled_profiling):
        route = f" ({FAMILY_ROUTE})" if family else ""
        raise UsageError(
            f"{settings.model_path} holds a {config.model_type!r} model{route}; controlled profiling takes llava or "
            "vistog"
        )
    return config if isinstance(config, VisToGConfig) else config_for_budget(config, None)


def config_for_budget(config, budget: int | None):
    """`config` with VisToG set for a budget: None or P (the patch count) switches it off."""
    from vistog_bench.model.modeling import vistog_config

    off = vistog_config(config, None)
    return off if budget is None or budget == off.num_patches else vistog_config(config, budget)


def check_budgets(config, budgets: tuple[int, ...]) -> None:
    num_patches = config.num_patches
    for budget in budgets:
        if not 1 <= budget <= num_patches:
            raise UsageError(f"budget {budget} is outside 1..{num_patches} (the patch count of this model)")
    native = config.num_semantic_tokens
    if native is not None and set(budgets) != {native}:
        raise UsageError(
            f"a VisToG checkpoint serves only its own budget {native}; got --budgets {','.join(map(str, budgets))}"
        )


def method_of(config, budget: int) -> str:
    return "none" if budget == config.num_patches else "vistog"


# -- analytic (no weights) -------------------------------------------------------------------------------------------
def analytic_records(settings: ProfileSettings) -> list[ProfileRecord]:
    base = base_config(settings)
    check_budgets(base if base.num_semantic_tokens is None else config_for_budget(base, None), settings.budgets)
    gpus = [get_gpu(name) for name in settings.gpus]
    element_bytes = dtype_bytes(settings.dtype)
    records = []
    for budget in settings.budgets:
        config = config_for_budget(base, budget)
        shape = F.ArchShape.from_config(config)
        weights = stage_weight_bytes(meta_model(config), element_bytes)
        for batch in settings.batch_sizes:
            for new_tokens in settings.new_tokens:
                costs = F.generate_flops(
                    shape, budget=budget, batch_size=batch, text_tokens=settings.text_tokens, output_tokens=new_tokens
                )
                moved = stage_bytes(
                    shape,
                    weights,
                    budget=budget,
                    batch_size=batch,
                    text_tokens=settings.text_tokens,
                    output_tokens=new_tokens,
                    element_bytes=element_bytes,
                )
                kv_tokens = generate_kv_tokens(budget + settings.text_tokens, new_tokens)
                roofline = {gpu.key: floors(costs.by_stage, moved, gpu, settings.dtype) for gpu in gpus}
                records.append(
                    ProfileRecord(
                        kind="analytic",
                        method=method_of(config, budget),
                        budget=budget,
                        batch_size=batch,
                        device=",".join(gpu.key for gpu in gpus),
                        dtype=settings.dtype,
                        execution_path="analytic",
                        visual_tokens=budget * batch,
                        text_tokens=settings.text_tokens * batch,
                        output_tokens=new_tokens * batch,
                        flops=costs.by_stage,
                        kv_cache_bytes=kv_cache_bytes(shape, batch, kv_tokens, element_bytes),
                        weight_bytes=weights["total"],
                        null_reasons={"*_ms": "analytic record: nothing is measured; see extra.roofline for floors"},
                        extra={
                            "flops_convention": costs.convention,
                            "decode_flops_per_token": costs.decode_per_token,
                            "fastv_prefill_macs": costs.fastv_prefill,
                            "fastv_convention": F.FASTV_CONVENTION,
                            "weight_bytes_by_stage": weights,
                            "bytes_by_stage": moved,
                            "roofline": roofline,
                            "gpu_sources": {gpu.key: gpu.source for gpu in gpus},
                        },
                    )
                )
    return records


# -- measured ----------------------------------------------------------------------------------------------------------
@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def synthetic_image(size: int, seed: int):
    """A fixed image: smooth colour gradients plus seeded noise (the same pixels every run)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


class ModelSource:
    """Builds the model for each budget from one set of weights (see the module docstring)."""

    def __init__(self, settings: ProfileSettings):
        from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration

        self.settings = settings
        self.device = torch.device(settings.device)
        self.dtype = torch_dtype(settings.dtype)
        self.config = base_config(settings)
        check_budgets(self.config, settings.budgets)
        self.native_vistog = self.config.num_semantic_tokens is not None
        torch.manual_seed(settings.seed)
        if settings.shape is not None:
            llava_config = LlavaConfig(
                **{k: v for k, v in self.config.to_dict().items() if k not in ("model_type", "num_semantic_tokens")}
            )
            llava_config._attn_implementation = "sdpa"
            with self.device, _default_dtype(self.dtype):
                self.base = LlavaForConditionalGeneration(llava_config).eval()
            self.weights = f"random (shape {settings.shape}, seed {settings.seed})"
            size = self.config.vision_config.image_size
            self.image_processor = CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            )
        else:
            from vistog_bench.model import VisToGConfig, load_checkpoint
            from vistog_bench.model.loading import load_config, load_pretrained, load_processor

            if isinstance(load_config(settings.model_path), VisToGConfig):  # a VisToG checkpoint, not stock LLaVA
                self.base, processor = load_checkpoint(
                    settings.model_path, device=settings.device, dtype=settings.dtype
                )
            else:
                llava = load_pretrained(
                    LlavaForConditionalGeneration, settings.model_path, dtype=self.dtype, attn_implementation="sdpa"
                )  # corrupt safetensors: one line, exit 2
                self.base = llava.to(self.device).eval()
                processor = load_processor(settings.model_path)
            self.weights = f"checkpoint {settings.model_path}"
            self.image_processor = processor.image_processor

    def model_for_budget(self, budget: int):
        """(model, notes): the VisToG model measured at `budget`."""
        from vistog_bench.model import VisToGForConditionalGeneration

        if self.native_vistog:
            return self.base, {"weights": self.weights, "vistog_parts": "checkpoint"}
        num_patches = self.config.num_patches
        torch.manual_seed(self.settings.seed + budget)
        semantic = None if budget == num_patches else budget
        model = VisToGForConditionalGeneration.from_llava(self.base, num_semantic_tokens=semantic).eval()
        notes = {"weights": self.weights}
        if semantic is not None:
            notes["vistog_parts"] = "random (fresh semantic tokens + grouping: timing-valid, outputs meaningless)"
        return model, notes


def prompt_ids(config, budget: int, text_tokens: int, seed: int) -> torch.Tensor:
    """[1, budget + text_tokens]: BOS, `budget` image placeholders, then fixed text ids (no special tokens)."""
    text = config.text_config
    special = {config.image_token_index, text.bos_token_id, text.eos_token_id, text.pad_token_id} - {None}
    allowed = torch.tensor([i for i in range(max(special) + 1, text.vocab_size) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    words = allowed[torch.randint(len(allowed), (text_tokens - 1,), generator=generator)]
    bos = text.bos_token_id if text.bos_token_id is not None else 1
    image = torch.full((budget,), config.image_token_index)
    return torch.cat([torch.tensor([bos]), image, words])[None]


def generate_kwargs(config, new_tokens: int, compiled: bool) -> dict[str, Any]:
    text = config.text_config
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=text.pad_token_id if text.pad_token_id is not None else 0,
    )
    if compiled:
        from transformers import CompileConfig

        # Static cache + torch.compile (CUDA graphs via "reduce-overhead") for decode steps; prefill stays eager.
        kwargs.update(cache_implementation="static", compile_config=CompileConfig(fullgraph=False))
    return kwargs


def measure_cell(
    model,
    source: ModelSource,
    profiler: RequestProfiler,
    *,
    budget: int,
    batch_size: int,
    new_tokens: int,
    notes: dict[str, Any],
) -> ProfileRecord:
    """Warm up, then time `repeats` generates; one controlled record with medians and spread."""
    settings = source.settings
    ids = prompt_ids(model.config, budget, settings.text_tokens, settings.seed)
    image = synthetic_image(model.config.vision_config.image_size, settings.seed)
    gen_kwargs = generate_kwargs(model.config, new_tokens, settings.compile)
    method = method_of(model.config, budget)

    def prepare() -> dict[str, torch.Tensor]:
        pixels = source.image_processor([image] * batch_size, return_tensors="pt")["pixel_values"]
        input_ids = ids.expand(batch_size, -1).to(source.device)
        return dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixels.to(source.device, source.dtype),
        )

    def run(req, kwargs: dict[str, Any] = gen_kwargs) -> None:
        with req.stage("preprocess"):
            inputs = prepare()
        out = model.generate(**inputs, **kwargs, logits_processor=LogitsProcessorList([req.first_token_clock]))
        generated = out.shape[1] - inputs["input_ids"].shape[1]
        if generated != new_tokens:
            raise RuntimeError(f"generate returned {generated} tokens, {new_tokens} were forced")
        req.set_tokens(
            visual=budget * batch_size, text=settings.text_tokens * batch_size, output=new_tokens * batch_size
        )

    request = dict(method=method, budget=budget, batch_size=batch_size, task=None)
    graphs_before = compiled_graphs() if settings.compile else 0
    counted: dict[str, float] = {}
    warmups = settings.warmup
    if settings.count_flops:
        # Counted on the eager path: the same work, and FlopCounterMode stays out of torch.compile's way. Eager, it
        # doubles as a warm-up (times discarded); compiled, the warm-ups must still compile and capture graphs.
        with profiler.request(**request, count_flops=True) as req:
            run(req, generate_kwargs(model.config, new_tokens, compiled=False))
        counted = req.record.counted_flops
        if not settings.compile:
            warmups = max(warmups - 1, 0)
    for _ in range(warmups):
        with profiler.request(**request) as req:
            run(req)
    records = []
    started = time.perf_counter()
    while len(records) < settings.repeats or time.perf_counter() - started < settings.min_duration_s:
        with profiler.request(**request) as req:
            run(req)
        records.append(req.record)
    profiler.take_records()  # kept here as `records`; the warm-ups' are dropped
    record = aggregate(records, counted=counted, notes=notes, settings=settings)
    if settings.compile:
        record.extra["compile"]["graphs_compiled"] = compiled_graphs() - graphs_before  # warm-ups included
    _add_roofline(record, model, source, budget=budget, batch_size=batch_size, new_tokens=new_tokens)
    return record


def compiled_graphs() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _add_roofline(
    record: ProfileRecord, model, source: ModelSource, *, budget: int, batch_size: int, new_tokens: int
) -> None:
    """On a GPU of the roofline table: the floor it could reach for the same work, beside the measured times
    (`extra.roofline`)."""
    settings = source.settings
    gpu = gpu_from_device_name(torch.cuda.get_device_name(source.device)) if source.device.type == "cuda" else None
    if gpu is None or settings.dtype not in gpu.peak_flops:
        return
    shape = F.ArchShape.from_config(model.config)
    moved = stage_bytes(
        shape,
        stage_weight_bytes(model),
        budget=budget,
        batch_size=batch_size,
        text_tokens=settings.text_tokens,
        output_tokens=new_tokens,
        element_bytes=dtype_bytes(settings.dtype),
    )
    record.extra["roofline"] = {gpu.key: floors(record.flops, moved, gpu, settings.dtype)}


def aggregate(
    records: list[ProfileRecord], *, counted: dict[str, float], notes: dict[str, Any], settings: ProfileSettings
) -> ProfileRecord:
    """One kind="controlled" record: stage fields are medians, `stats` holds stats.summarize per stage (and for
    the SECOND_CLOCKS)."""
    first = records[0]
    stats: dict[str, dict[str, float]] = {}
    medians: dict[str, float | None] = {}
    for name in TIMED_FIELDS:
        values = [getattr(r, f"{name}_ms") for r in records]
        if all(v is not None for v in values):
            stats[name] = summarize(values)
            medians[f"{name}_ms"] = stats[name]["median"]
        else:
            medians[f"{name}_ms"] = None
    for name, stage in SECOND_CLOCKS.items():
        values = [r.extra.get(f"{name}_ms") for r in records]
        if all(v is not None for v in values):
            stats[name] = summarize(values)
            stage_values = [getattr(r, f"{stage}_ms") for r in records]
            if all(v is not None for v in stage_values):  # |second - stage| of each request, in ms
                stats[f"{name}_gap"] = summarize([abs(a - b) for a, b in zip(values, stage_values, strict=True)])
    energies = [r.energy_j for r in records]
    energy_j = None
    if all(v is not None for v in energies):
        stats["energy_j"] = summarize(energies)
        energy_j = sum(energies) / len(energies)  # mean: the counter is coarse, the mean is the run total / n
    peaks: dict[str, int] = {}
    for record in records:
        for key, value in record.peak_memory_bytes.items():
            peaks[key] = max(peaks.get(key, 0), value)
    reasons = {k: v for k, v in first.null_reasons.items() if k.removesuffix("_ms") not in stats}
    extra: dict[str, Any] = {
        "warmup": settings.warmup,
        "repeats": len(records),
        "min_duration_s": settings.min_duration_s,
        "threads": torch.get_num_threads() if settings.device == "cpu" else None,
        "clock": first.extra.get("clock"),
        "decode_steps": first.extra.get("decode_steps"),
        "prompt_tokens": first.extra.get("prompt_tokens"),
        "kv_cache_bytes_computed": first.extra.get("kv_cache_bytes_computed"),
        "kv_cache_bytes_measured": first.extra.get("kv_cache_bytes_measured"),
        "flops_convention": F.CONVENTION,
        **notes,
    }
    compiled = [r.extra["compile"] for r in records if "compile" in r.extra]
    if compiled:  # compiled asked for: a graph ran only if it ran in every repeat
        missed = [c for c in compiled if not c["ran"]]
        extra["compile"] = {
            **(missed[0] if missed else compiled[0]),
            "ran": not missed,
            "decode_hooks_fired": sum(c["decode_hooks_fired"] for c in compiled),
        }
    if counted:
        extra["flops_mismatch"] = mismatches(first.flops, counted, MISMATCH_TOLERANCE)
    else:
        reasons["counted_flops"] = "FLOP counting switched off (--no-count-flops)"
    return dataclasses.replace(
        first,
        kind="controlled",
        execution_path=("compiled" if extra["compile"]["ran"] else "eager") if compiled else first.execution_path,
        stats=stats,
        counted_flops=counted,
        peak_memory_bytes=peaks,
        energy_j=energy_j,
        peak_rss_bytes=max((r.peak_rss_bytes or 0) for r in records) or None,
        null_reasons=reasons,
        extra=extra,
        **medians,
    )


def measured_records(
    settings: ProfileSettings,
    on_record: Callable[[ProfileRecord], None] | None = None,
    source: ModelSource | None = None,
) -> list[ProfileRecord]:
    """Every cell of the sweep, in budget -> batch size -> new tokens order; `on_record` sees each as it lands.
    `source`: the weights already loaded (`ModelSource(settings)`, which refuses a bad checkpoint), else loaded here."""
    with cpu_threads(settings.threads):
        source = source or ModelSource(settings)
        return _measure_sweep(source, on_record)


def _measure_sweep(source: ModelSource, on_record: Callable[[ProfileRecord], None] | None) -> list[ProfileRecord]:
    settings = source.settings
    records = []
    for budget in settings.budgets:
        model, notes = source.model_for_budget(budget)
        profiler = RequestProfiler(model, device=source.device, path=settings.path)
        with profiler.attached():
            for batch in settings.batch_sizes:
                for new_tokens in settings.new_tokens:
                    record = measure_cell(
                        model, source, profiler, budget=budget, batch_size=batch, new_tokens=new_tokens, notes=notes
                    )
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
        del model, profiler
    return records


def settings_dict(settings: ProfileSettings) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(settings)))


__all__ = [
    "ProfileSettings",
    "analytic_records",
    "measured_records",
    "measure_cell",
    "aggregate",
    "base_config",
    "config_for_budget",
    "check_budgets",
    "prompt_ids",
    "synthetic_image",
    "ModelSource",
]
