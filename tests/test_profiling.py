"""Profiling layer: hooks attach from outside and detach, stage times on CPU, analytic vs counted FLOPs, KV cache,
NVML-absent degradation, the `profile` command."""

from __future__ import annotations

import json
import mmap
import os

import pytest
import torch
from testers import tiny_llava
from transformers import LogitsProcessorList

from vistog_bench.cli import main as cli_main
from vistog_bench.model import VisToGForConditionalGeneration, preset_config
from vistog_bench.profiling import RequestProfiler, device_facts
from vistog_bench.profiling import flops as F
from vistog_bench.profiling.controlled import prompt_ids
from vistog_bench.profiling.hooks import hook_count
from vistog_bench.profiling.memory import meta_model, peak_rss_bytes, reset_peak_rss, stage_weight_bytes
from vistog_bench.profiling.nvml import EnergyMeter, _nvml
from vistog_bench.profiling.roofline import floors, get_gpu, stage_bytes
from vistog_bench.results import RunDir

TEXT_TOKENS = 16
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def models():
    llava = tiny_llava()
    torch.manual_seed(1)
    return {
        64: VisToGForConditionalGeneration.from_llava(llava, num_semantic_tokens=64).eval(),
        576: VisToGForConditionalGeneration.from_llava(llava, num_semantic_tokens=None).eval(),
    }


def generate(model, budget: int, batch: int = 2, new_tokens: int = NEW_TOKENS):
    ids = prompt_ids(model.config, budget, TEXT_TOKENS, seed=0).expand(batch, -1)
    pixels = torch.randn(batch, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )


def profiled(model, budget: int, *, count_flops: bool = False, batch: int = 2):
    profiler = RequestProfiler(model, device="cpu")
    with profiler.attached():
        with profiler.request(method="vistog", budget=budget, batch_size=batch, count_flops=count_flops) as req:
            with req.stage("preprocess"):
                sum(range(1000))
            generate(model, budget, batch)
    return req.record


# -- hooks -------------------------------------------------------------------------------------------------------------
def test_hooks_attach_and_detach_cleanly(models):
    model = models[64]
    profiler = RequestProfiler(model)
    assert hook_count(model) == 0  # constructing attaches nothing
    with profiler.attached():
        assert hook_count(model) == 8  # pre + post on vision, grouping, projector; pre on llm; post on lm_head
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with profiler.attached():
            raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_request_needs_attached_profiler_and_no_nesting(models):
    profiler = RequestProfiler(models[64])
    with pytest.raises(RuntimeError, match="attach"):
        with profiler.request(method="vistog", budget=64, batch_size=1):
            pass
    with profiler.attached():
        with profiler.request(method="vistog", budget=64, batch_size=1) as req:
            with pytest.raises(RuntimeError, match="already open"):
                with profiler.request(method="vistog", budget=64, batch_size=1):
                    pass
            with pytest.raises(RuntimeError, match="has closed"):
                _ = req.record
    # no generate ran: a record all the same, its stage times null with reasons
    assert req.record.prefill_ms is None and "prefill_ms" in req.record.null_reasons


# -- stage times and tokens on CPU -------------------------------------------------------------------------------------
def test_stage_times_present_and_positive_on_cpu(models):
    record = profiled(models[64], 64)
    assert record.kind == "request" and record.path == "eager" and record.device == "cpu"
    for name in ("preprocess", "vision", "grouping", "projector", "prefill", "decode", "decode_per_token", "total"):
        value = getattr(record, f"{name}_ms")
        assert value is not None and value > 0, name
    assert record.ttft_ms <= record.total_ms
    assert record.vision_ms + record.grouping_ms + record.projector_ms + record.prefill_ms <= record.ttft_ms
    assert record.extra["decode_steps"] == NEW_TOKENS - 1
    assert (record.visual_tokens, record.text_tokens, record.output_tokens) == (2 * 64, 2 * TEXT_TOKENS, 2 * NEW_TOKENS)
    assert record.peak_rss_bytes > 0


def test_first_token_clock_agrees_with_the_hook_ttft(models):
    """The logits processor is called after lm_head's output (the hook TTFT) and before the first decode step ends:
    its reading lies between the two, whatever the machine's load."""
    model = models[64]
    ids = prompt_ids(model.config, 64, TEXT_TOKENS, seed=0)
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    profiler = RequestProfiler(model, device="cpu")
    with profiler.attached():
        with profiler.request(method="vistog", budget=64, batch_size=1) as req:
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=pixels,
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=0,
                logits_processor=LogitsProcessorList([req.first_token_clock]),
            )
    record = req.record
    assert record.ttft_ms <= record.extra["ttft_logits_processor_ms"] <= record.ttft_ms + record.decode_ms
    assert profiler.take_records() == [record] and profiler.take_records() == []  # the profiler keeps its records


def test_vistog_off_has_no_grouping_stage(models):
    record = profiled(models[576], 576, batch=1)
    assert record.grouping_ms is None and "grouping_ms" in record.null_reasons
    assert record.visual_tokens == 576


def test_compiled_path_hooks_stay_out_of_the_graph(models):
    """Dynamo traces the decode step with the hooks installed (fullgraph: a hook that broke the graph would raise);
    the compiled path times decode as one span. Eager backend on CPU: the tracing is what is tested here."""
    from transformers import CompileConfig

    model = models[64]
    config = CompileConfig(backend="eager", fullgraph=True)
    config._compile_all_devices = True  # transformers compiles on CPU only when asked
    ids = prompt_ids(model.config, 64, TEXT_TOKENS, seed=0).expand(2, -1)
    pixels = torch.randn(2, 3, 336, 336)
    profiler = RequestProfiler(model, device="cpu", path="compiled")
    with profiler.attached():
        for _ in range(2):  # the first run compiles
            with profiler.request(method="vistog", budget=64, batch_size=2) as req:
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    pixel_values=pixels,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=0,
                    cache_implementation="static",
                    compile_config=config,
                )
                req.set_tokens(output=2 * NEW_TOKENS)
    torch._dynamo.reset()
    record = req.record
    assert record.path == "compiled" and record.prefill_ms > 0 and record.decode_ms > 0
    assert record.extra["decode_steps"] == NEW_TOKENS - 1 and "decode_span" in record.extra
    # a static cache is allocated at its maximum length: here exactly the positions the generate needs
    assert record.extra["kv_cache_bytes_measured"] >= record.extra["kv_cache_bytes_computed"]


# -- FLOPs -------------------------------------------------------------------------------------------------------------
def _vmhwm_bytes() -> int:
    """VmHWM read afresh from a newly opened /proc/self/status (what the kept-open reader must agree with)."""
    line = next(entry for entry in open("/proc/self/status").read().splitlines() if entry.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_peak_rss_reset_and_read_through_the_kept_files():
    assert reset_peak_rss()
    before = peak_rss_bytes()
    held = mmap.mmap(-1, 16 * 2**20)  # 16 MiB of anonymous memory, touched page by page; unmapped below, so it
    for offset in range(0, len(held), 4096):  # leaves the process whatever the allocator keeps cached
        held[offset] = 1
    grown = peak_rss_bytes()
    assert grown >= before + 15 * 2**20
    assert abs(grown - _vmhwm_bytes()) < 2**20
    held.close()
    assert reset_peak_rss()
    assert peak_rss_bytes() < grown - 8 * 2**20


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_peak_rss_in_a_forked_child_is_the_childs():
    peak_rss_bytes()  # the parent's file is open before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own /proc/self, not the parent's kept one (where its growth would not show)
        # the child's high-water mark starts from the parent's history (a large test process may have freed much
        # since its peak): reset it, in the child's own clear_refs, so that 32 MiB of growth shows above it
        reset_ok = reset_peak_rss()
        before = peak_rss_bytes()
        held = mmap.mmap(-1, 32 * 2**20)  # 32 MiB of anonymous memory, touched in the child only
        for offset in range(0, len(held), 4096):
            held[offset] = 1
        ok = reset_ok and peak_rss_bytes() >= before + 31 * 2**20 and abs(peak_rss_bytes() - _vmhwm_bytes()) < 2**20
        held.close()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_analytic_7b_prefill_is_8_50_tflops():
    shape = F.ArchShape.from_config(preset_config("llava-1.5-7b"))
    assert F.prefill_flops(shape, batch=1, prompt_tokens=576 + 64) == pytest.approx(8.50e12, rel=0.005)
    # FastV's convention: multiply-adds and two MLP matrices, well under half of ours
    assert F.fastv_llm_flops(shape, 1, 640) / F.prefill_flops(shape, 1, 640) == pytest.approx(0.39, abs=0.01)


@pytest.mark.parametrize("budget", [64, 576])
def test_analytic_and_counted_flops_agree_per_stage(models, budget):
    record = profiled(models[budget], budget, count_flops=True)
    for stage in ("vision", "grouping", "projector", "prefill", "decode", "total"):
        analytic, counted = record.flops[stage], record.counted_flops[stage]
        assert counted == pytest.approx(analytic, rel=0.01, abs=1), stage
    assert record.extra["flops_mismatch"] == {}
    # the shape-driven request FLOPs equal the sweep formula for the same cell
    shape = F.ArchShape.from_config(models[budget].config)
    cell = F.generate_flops(shape, budget=budget, batch_size=2, text_tokens=TEXT_TOKENS, output_tokens=NEW_TOKENS)
    assert record.flops == pytest.approx(cell.by_stage)


# -- memory ------------------------------------------------------------------------------------------------------------
def test_kv_cache_computed_equals_measured(models):
    record = profiled(models[64], 64)
    computed, measured = record.extra["kv_cache_bytes_computed"], record.extra["kv_cache_bytes_measured"]
    assert measured is not None and computed == measured == record.kv_cache_bytes
    shape = F.ArchShape.from_config(models[64].config)  # 2 (K, V) * L * B * positions * Dkv * 4 bytes
    assert computed == 2 * shape.layers * 2 * (64 + TEXT_TOKENS + NEW_TOKENS - 1) * shape.kv_width * 4


def test_weight_bytes_from_meta_model_match_real_model(models):
    model = models[64]
    real = stage_weight_bytes(model)
    meta = stage_weight_bytes(meta_model(model.config))
    assert real == meta
    assert real["total"] == sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


def test_roofline_decode_is_memory_bound_on_h100():
    config = preset_config("llava-1.5-7b", 64)
    shape = F.ArchShape.from_config(config)
    weights = stage_weight_bytes(meta_model(config), element_bytes=2)
    cell = F.generate_flops(shape, budget=64, batch_size=1, text_tokens=64, output_tokens=2)
    moved = stage_bytes(shape, weights, budget=64, batch_size=1, text_tokens=64, output_tokens=2, element_bytes=2)
    rows = floors(cell.by_stage, moved, get_gpu("H100"), "bfloat16")
    assert rows["decode"]["bound"] == "memory"
    assert rows["decode"]["floor_ms"] == pytest.approx(weights["llm"] / 3.35e12 * 1e3, rel=0.02)  # ~13.5 GB / 3.35 TB/s


# -- NVML / CUDA absent ------------------------------------------------------------------------------------------------
def test_nvml_absent_gives_nulls_with_reasons(models):
    facts = device_facts("cpu")
    assert facts["name"] is None and "not an NVIDIA GPU" in facts["null_reasons"]["name"]
    meter = EnergyMeter("cpu")
    assert meter.read_mj() is None and meter.reason
    record = profiled(models[64], 64)
    assert record.energy_j is None and record.null_reasons["energy_j"]
    assert record.peak_memory_bytes == {} and "peak_memory_bytes" in record.null_reasons
    if torch.cuda.is_available() or _nvml()[0] is not None:
        pytest.skip("NVML / CUDA present: the absent path is only reachable for cpu here")
    facts = device_facts("cuda")  # no driver: nulls with reasons, no exception
    assert all(facts[key] is None for key in ("name", "driver_version", "power_w", "energy_counter_mj"))
    assert facts["null_reasons"]["energy_counter_mj"]
    assert EnergyMeter("cuda").read_mj() is None


# -- the profile command -----------------------------------------------------------------------------------------------
def test_profile_command_writes_controlled_records(tmp_path, capsys):
    code = cli_main(
        [
            "profile",
            "--shape",
            "tiny",
            "--budgets",
            "576,64",
            "--batch-sizes",
            "1",
            "--new-tokens",
            "2",
            "--text-tokens",
            "8",
            "--warmup",
            "1",
            "--repeats",
            "3",
            "--min-duration",
            "0",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    (run_path,) = tmp_path.iterdir()
    run = RunDir(run_path)
    records = run.profile()
    assert [(r.kind, r.budget, r.method) for r in records] == [
        ("controlled", 576, "none"),
        ("controlled", 64, "vistog"),
    ]
    for record in records:
        assert record.path == "eager" and record.output_tokens == 2  # batch 1
        assert record.stats["ttft"]["n"] == 3 and record.stats["prefill"]["p10"] <= record.stats["prefill"]["p90"]
        assert record.prefill_ms == record.stats["prefill"]["median"] > 0
        assert record.extra["flops_mismatch"] == {}
        stats = record.stats["ttft"]
        assert stats["p50"] == stats["median"] and stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"]
        assert stats["stdev"] >= 0 and stats["cv"] == pytest.approx(stats["stdev"] / stats["mean"])
        assert record.stats["ttft_logits_processor"]["n"] == 3 and record.extra["threads"] == 1
    assert run.manifest().device["device"] == "cpu"
    assert run.manifest().config["threads"] == 1 and run.manifest().config["warmup"] == 1
    assert "TTFT ms" in capsys.readouterr().out


def test_profile_command_on_a_stock_checkpoint(tmp_path):
    from testers import save_tiny_llava

    checkpoint = save_tiny_llava(tmp_path / "llava")
    code = cli_main(
        [
            "profile",
            "--model",
            str(checkpoint),
            "--budgets",
            "64",
            "--batch-sizes",
            "2",
            "--new-tokens",
            "1",
            "--text-tokens",
            "8",
            "--warmup",
            "0",
            "--repeats",
            "2",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    (record,) = RunDir(next((tmp_path / "out").iterdir())).profile()
    assert record.method == "vistog" and record.visual_tokens == 2 * 64 and record.output_tokens == 2
    assert record.extra["vistog_parts"].startswith("random") and record.decode_ms == 0.0


def test_profile_refuses_other_budgets_on_a_vistog_checkpoint(tmp_path, capsys):
    from testers import tiny_processor

    path = tmp_path / "vistog"
    VisToGForConditionalGeneration.from_llava(tiny_llava(), num_semantic_tokens=16).save_pretrained(path)
    tiny_processor().save_pretrained(path)
    assert cli_main(["profile", "--model", str(path), "--budgets", "64", "--output", str(tmp_path / "out")]) == 2
    assert "only its own budget 16" in capsys.readouterr().err


def test_profile_analytic_json(tmp_path, capsys):
    code = cli_main(
        [
            "profile",
            "--shape",
            "llava-1.5-7b",
            "--analytic",
            "--budgets",
            "576",
            "--batch-sizes",
            "1",
            "--new-tokens",
            "1",
            "--gpu",
            "h100-sxm,a100-80gb,h200",
            "--json",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert record["kind"] == "analytic"
    assert record["flops"]["prefill"] == pytest.approx(8.50e12, rel=0.005)
    assert set(record["extra"]["roofline"]) == {"h100-sxm", "a100-80gb", "h200"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "llava-7b"], "unknown shape"),
        (["--shape", "tiny", "--budgets", "700"], "outside 1..576"),
        (["--shape", "tiny", "--budgets", "0"], ">= 1"),
        (["--shape", "tiny", "--budgets", "64,x"], "comma-separated integers"),
        (["--shape", "tiny", "--device", "cpu", "--compile"], "--compile needs a CUDA device"),
        (["--shape", "tiny", "--analytic", "--gpu", "v100"], "unknown GPU"),
        (["--budgets", "64"], "--model PATH or --shape NAME"),
        (["--model", "/nonexistent/checkpoint"], "checkpoint folder not found"),
    ],
)
def test_profile_bad_input_exits_2(tmp_path, capsys, argv, message):
    assert cli_main(["profile", *argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def _profiled_generate(model, method, budget, tell_profiler=True, **options):
    """`tell_profiler`: hand the profiler what was applied, as every caller does (it reads no state of its own)."""
    from testers import random_images, tiny_processor

    from vistog_bench.model import build_inputs, llava_prompt
    from vistog_bench.profiling import RequestProfiler
    from vistog_bench.reducers import applied_method, apply_method, tokens_per_image

    apply_method(model, method, budget, **options)
    inputs = build_inputs(
        tiny_processor(), [llava_prompt("what colour ?")], [random_images(1)], tokens_per_image(model)
    )
    profiler = RequestProfiler(model, applied=applied_method(model) if tell_profiler else None)
    with profiler.attached():
        with profiler.request(method=method, budget=budget, batch_size=1, count_flops=True) as request:
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    return request.record


def test_fastv_flops_charge_the_first_layers_at_full_length():
    model = VisToGForConditionalGeneration.from_llava(tiny_llava(), None).eval()
    stock = _profiled_generate(model, "none", 576)
    fastv = _profiled_generate(model, "fastv", 64, fastv_layer=1)
    assert fastv.extra["fastv_pruning"] == {"pruned_after_layer": 1, "pruned_tokens": 576 - 64}
    for stage in ("prefill", "decode"):
        assert fastv.flops[stage] == pytest.approx(fastv.counted_flops[stage], rel=0.01)
    # layer 0 runs at full length: more than a model that had 64 visual tokens throughout, less than stock
    assert fastv.flops["prefill"] < stock.flops["prefill"]
    assert fastv.flops["prefill"] > stock.flops["prefill"] / 2


def test_reducer_time_is_the_grouping_stage():
    model = VisToGForConditionalGeneration.from_llava(tiny_llava(), None).eval()
    record = _profiled_generate(model, "pool", 64)
    assert record.grouping_ms is not None and record.grouping_ms > 0
    assert record.extra["grouping_stage"].startswith("pool")
    assert "grouping_ms" in _profiled_generate(model, "none", 576).null_reasons
    # the profiler knows only what its caller told it: a reducer it was not told of has no stage of its own
    assert "grouping_ms" in _profiled_generate(model, "pool", 64, tell_profiler=False).null_reasons
