"""Each training-free reducer's own milliseconds per budget, on a vision shape with random weights.

    python benchmarks/reducer_overhead.py --shapes tiny,llava-1.5-7b --budgets 192,128,64,16 [--device cuda]
    python benchmarks/reducer_overhead.py --shapes tiny --tower        # also the whole tower, stock vs ToMe

"Own" means the reducer's work alone, on the feature-layer states of one real forward of the vision tower (random
weights, random pixels, `--batch-size` images):
  pool, random, visionzip, prumerge   reducer(states) [B, P, Dv] -> [B, K, Dv] (prumerge includes its q / k
                                      projections of the next encoder layer; visionzip reads the CLS attention and
                                      keys the tower returns, whose extra cost is in --tower's `stock+cls` row)
  tome                                the merges alone (matching + weighted averages in every layer), replayed on the
                                      inputs they received in a real forward; ToMe also *shrinks* the encoder's work,
                                      which --tower shows
  vispruner, vscan (encoder stage)    reducer(states), as pool (both read the CLS attention the tower returns)
  downsample                          its layer-0 pooling alone, replayed on the input it received (as tome)
  fastv, dart, pdrop, sparsevlm,      every stage's selection (scores from one layer's q / k with RoPE, ranking,
  vscan (LLM stage), divprune,        merging), then gathering hidden states / rotary tables and the pruned mask, on
  cdpruner, holitom                   the LLM shape of the same config with a prompt of P image tokens + 40 text
                                      tokens (random q / k / states, no weights); holitom on one image (its
                                      temporal part needs frames: --frames)
Minimum, median and quartiles of `--repeats` timings after `--warmup`; CUDA events on a GPU, perf_counter on the
CPU. On a shared CPU the minimum is the figure to read (the least-disturbed run); the spread shows the contention.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from vistog_bench.errors import UsageError
from vistog_bench.model.presets import preset_config
from vistog_bench.model.vision import VisToGVisionTower
from vistog_bench.profiling.timers import time_repeats
from vistog_bench.reducers import (
    PoolReducer,
    PruMergeReducer,
    RandomReducer,
    Stage,
    ToMeMerge,
    VisionZipReducer,
    VisPrunerReducer,
    VScanReducer,
)
from vistog_bench.reducers.cdpruner import CDPrunerSelector
from vistog_bench.reducers.dart import LAYER as DART_LAYER
from vistog_bench.reducers.dart import DARTSelector
from vistog_bench.reducers.divprune import DivPruneSelector
from vistog_bench.reducers.downsample import GridDownsample
from vistog_bench.reducers.fastv import LastTokenAttention
from vistog_bench.reducers.holitom import LAYER as HOLITOM_LAYER
from vistog_bench.reducers.holitom import holitom
from vistog_bench.reducers.llm_pruning import (
    SampleView,
    attention_rows,
    gather_rows,
    left_pad,
    rotated,
)
from vistog_bench.reducers.pdrop import LAYERS as PDROP_LAYERS
from vistog_bench.reducers.schedule import (
    first_stage_tokens,
    mean_schedule,
    scaled_layers,
)
from vistog_bench.reducers.sparsevlm import LAYERS as SPARSEVLM_LAYERS
from vistog_bench.reducers.sparsevlm import SparseVLMSelector
from vistog_bench.reducers.tome import merge_schedule
from vistog_bench.reducers.vscan import LAYER as VSCAN_LAYER
from vistog_bench.reducers.vscan import LLM_KEEP as VSCAN_KEEP
from vistog_bench.reducers.vscan import ShallowCLSAttention, shallow_layer

LLM_METHODS = ("fastv", "dart", "pdrop", "sparsevlm", "vscan", "divprune", "cdpruner", "holitom")

TEXT_TOKENS = 40  # a short LLaVA-1.5 question around the image


def summary(times: list[float]) -> dict:
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"min_ms": min(times), "median_ms": median, "q1_ms": q1, "q3_ms": q3, "repeats": len(times)}


class RecordingMerge:
    """Wraps a TokenMerge (ToMe's, downsample's) and keeps the inputs of each call, to replay the merges alone."""

    def __init__(self, merge):
        self.merge, self.calls = merge, []

    def __call__(self, layer_index, hidden_states, key, sizes):
        self.calls.append((layer_index, hidden_states.clone(), key.clone(), sizes.clone()))
        return self.merge(layer_index, hidden_states, key, sizes)


class RandomVisionAttention:
    """Stands for HoliTom's vision attention hook: random [N, P] rows (up to 256 frames)."""

    def __init__(self, patches: int, device):
        self.rows = torch.rand(256, patches, generator=torch.Generator().manual_seed(0)).to(device)

    def take(self) -> torch.Tensor:
        return self.rows


def llm_stages(
    config, method: str, budget: int, pdrop_layers: tuple[int, ...] | None, device="cpu"
) -> tuple[object, tuple, int]:
    """(selector, stages, tokens per image entering the LLM) of an in-LLM method, as apply_method builds them."""
    text = config.text_config
    layers, patches = text.num_hidden_layers, config.num_patches
    if method == "fastv":
        return LastTokenAttention(), (Stage(min(2, layers - 1), budget),), patches
    if method in ("pdrop", "sparsevlm"):
        paper = PDROP_LAYERS if method == "pdrop" else SPARSEVLM_LAYERS
        at = pdrop_layers if method == "pdrop" and pdrop_layers else scaled_layers(paper, layers)
        counts = mean_schedule(budget, layers, patches, at, method)
        selector = LastTokenAttention() if method == "pdrop" else SparseVLMSelector()
        return selector, tuple(Stage(a, n) for a, n in zip(at, counts, strict=True)), patches
    if method == "dart":
        at = scaled_layers((DART_LAYER,), layers)[0]
        (keep,) = mean_schedule(budget, layers, patches, (at,), "dart")
        return DARTSelector(LlamaRMSNorm(text.hidden_size)), (Stage(at, keep),), patches
    if method == "vscan":
        at = scaled_layers((VSCAN_LAYER,), layers)[0]
        first = first_stage_tokens(budget, layers, at, patches, VSCAN_KEEP)
        (keep,) = mean_schedule(budget, layers, first, (at,), "vscan")
        return LastTokenAttention(), (Stage(at, keep),), first
    if method == "holitom":
        vision = RandomVisionAttention(
            patches, device
        )  # the feature layer's attention is the tower's work, not timed here
        pruner = holitom(budget, layers, scaled_layers((HOLITOM_LAYER,), layers)[0], patches, 0, vision=vision)
        return pruner.selector, pruner.stages, patches
    selectors = {"divprune": DivPruneSelector(), "cdpruner": CDPrunerSelector()}
    return selectors[method], (Stage(0, budget),), patches


def llm_work(config, method: str, budget: int, args, frames: int):
    """A closure doing an in-LLM method's own work once per stage on the LLM shape of `config` (random tensors)."""
    text = config.text_config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = text.hidden_size // heads
    batch, device, dtype = args.batch_size, args.device, getattr(torch, args.dtype)
    pdrop_layers = tuple(int(x) for x in args.pdrop_layers.split(",")) if args.pdrop_layers else None
    selector, stages, per_image = llm_stages(config, method, budget, pdrop_layers, device)
    generator = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    plans, current = [], per_image
    for stage in stages:
        length = 5 + frames * current + TEXT_TOKENS  # "<s> USER :" before the images, as the LLaVA-1.5 prompt
        hidden, query, key = (
            rand(length, text.hidden_size),
            rand(length, heads * head_dim),
            rand(length, kv_heads * head_dim),
        )
        cos, sin = rand(1, length, head_dim), rand(1, length, head_dim)
        blocks = torch.arange(5, 5 + frames * current, device=device).view(frames, current)
        padding = torch.ones(length, dtype=torch.bool, device=device)
        plans.append((stage, hidden, query, key, (cos, sin), blocks, padding))
        current = stage.keep

    def attention(query, key, rotary, padding):
        return lambda positions: attention_rows(
            query[positions],
            key,
            rotary,
            padding,
            positions,
            0,
            head_dim=head_dim,
            kv_groups=heads // kv_heads,
            scaling=head_dim**-0.5,
        )

    def work():
        for index, (stage, hidden, query, key, rotary, blocks, padding) in enumerate(plans):
            for _ in range(batch):
                text_positions = torch.cat(
                    [torch.arange(5, device=device), torch.arange(blocks.max() + 1, hidden.shape[0], device=device)]
                )
                view = SampleView(
                    hidden,
                    blocks,
                    text_positions,
                    rotated(key, rotary, 0, head_dim),
                    attention(query, key, rotary, padding),
                    origin=torch.arange(hidden.shape[0], device=device),
                    inputs=SampleView(hidden, blocks, text_positions, None, None),  # SparseVLM's raters read it
                )
                selection = selector(view, index, stage.keep)
                keep = torch.ones(hidden.shape[0], dtype=torch.bool, device=device)
                keep[blocks.flatten()] = False
                keep[selection.visual] = True
                positions, valid = left_pad([keep.nonzero().squeeze(1)])
                pruned = gather_rows(hidden[None], positions)
                gather_rows(rotary[0], positions), gather_rows(rotary[1], positions)
                create_causal_mask(config=text, inputs_embeds=pruned, attention_mask=valid, cache=None)

    return work


def replayed_downsample(tower, pixels, feature_layer: int, budget: int, grid: int):
    """downsample's layer-0 pooling alone, on the input it received in a real forward."""
    downsample = GridDownsample(budget, grid)
    recorder = RecordingMerge(downsample)
    tower.token_merge = recorder
    with torch.no_grad():
        tower(pixels, feature_layer)
    tower.token_merge = None
    first_call = recorder.calls[0]
    return lambda: downsample(*first_call)


def vision_reducers(config, tower, budget: int, shallow: ShallowCLSAttention) -> dict:
    """The vision-side reducers at `budget` (prumerge only where an encoder layer follows the feature layer)."""
    vision, patches = config.vision_config, config.num_patches
    grid = vision.image_size // vision.patch_size
    num_layers = tower.layers_to_run(config.vision_feature_layer)
    text_layers = config.text_config.num_hidden_layers
    first = first_stage_tokens(budget, text_layers, scaled_layers((VSCAN_LAYER,), text_layers)[0], patches, VSCAN_KEEP)
    reducers = {
        "pool": PoolReducer(budget, grid),
        "random": RandomReducer(budget, patches, seed=0),
        "visionzip": VisionZipReducer(budget, patches, vision.num_attention_heads),
        "vispruner": VisPrunerReducer(budget, patches),
        "vscan-encoder": VScanReducer(first, patches, grid, shallow),
    }
    if num_layers < len(tower.encoder.layers):
        reducers["prumerge"] = PruMergeReducer(budget, patches, tower.encoder.layers[num_layers])
    return reducers


def bench_shape(shape: str, budgets: list[int], args) -> list[dict]:
    config = preset_config(shape)
    config.text_config._attn_implementation = "sdpa"
    device, dtype = args.device, getattr(torch, args.dtype)
    vision = config.vision_config
    torch.manual_seed(0)
    tower = VisToGVisionTower(vision).to(device, dtype).eval()
    pixels = torch.randn(args.batch_size, 3, vision.image_size, vision.image_size, device=device, dtype=dtype)
    feature_layer = config.vision_feature_layer
    num_layers = tower.layers_to_run(feature_layer)
    patches, grid = config.num_patches, vision.image_size // vision.patch_size
    shallow = ShallowCLSAttention(shallow_layer(len(tower.encoder.layers), num_layers))  # vscan's local scan
    shallow.install(tower)
    with torch.no_grad():
        states = tower(pixels, feature_layer, with_cls_attention=True)
    shallow.remove()  # keeps this forward's q / k
    rows = []

    def record(method: str, budget: int | None, times: list[float]):
        row = {"shape": shape, "method": method, "budget": budget, **summary(times)}
        rows.append(row)
        budget_text = budget if budget is not None else "-"
        print(
            f"| {shape} | {method} | {budget_text} | {row['min_ms']:.3f} | {row['median_ms']:.3f} "
            f"| {row['q1_ms']:.3f} - {row['q3_ms']:.3f} |",
            flush=True,
        )

    def run(fn, repeats=None):
        return time_repeats(fn, device, args.warmup, repeats or args.repeats)

    if args.tower:
        tower_repeats = max(3, args.repeats // 4)
        record("stock", None, run(lambda: tower(pixels, feature_layer), tower_repeats))
        record("stock+cls", None, run(lambda: tower(pixels, feature_layer, with_cls_attention=True), tower_repeats))
    for budget in budgets:
        reducers = vision_reducers(config, tower, budget, shallow)
        for method, reducer in reducers.items():
            record(method, budget, run(lambda reducer=reducer: reducer(states)))

        merge = ToMeMerge(merge_schedule(patches, budget, num_layers))
        recorder = RecordingMerge(merge)
        tower.token_merge = recorder
        with torch.no_grad():
            tower(pixels, feature_layer)
        calls = recorder.calls
        record("tome", budget, run(lambda merge=merge, calls=calls: [merge(*call) for call in calls]))
        if args.tower:
            tower.token_merge = merge
            record("tome-tower", budget, run(lambda: tower(pixels, feature_layer), max(3, args.repeats // 4)))
        record("downsample", budget, run(replayed_downsample(tower, pixels, feature_layer, budget, grid)))
        for method in LLM_METHODS:
            frames = args.frames if method == "holitom" else 1
            try:
                work = llm_work(config, method, budget, args, frames)
            except UsageError as error:  # a layer-mean budget this LLM cannot reach
                print(f"| {shape} | {method} | {budget} | refused: {error} |", flush=True)
                continue
            record(f"{method}-llm" if method == "vscan" else method, budget, run(work))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,llava-1.5-7b")
    parser.add_argument("--budgets", default="192,128,64,16")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=1, help="frames per sample for holitom (its temporal merging)")
    parser.add_argument("--pdrop-layers", default=None, help="pdrop's stage layers, e.g. 2,6,12 (default: the paper's)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tower", action="store_true", help="also time the whole tower: stock, +CLS attention, ToMe")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the environment here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    budgets = [int(b) for b in args.budgets.split(",")]
    print("| shape | method | budget | min ms | median ms | quartiles ms |\n|---|---|---|---|---|---|")
    rows = []
    for shape in args.shapes.split(","):
        rows += bench_shape(shape.strip(), budgets, args)
    if args.json:
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
        environment = {
            "torch": torch.__version__,
            "device": args.device,
            "device_name": device_name or platform.machine(),
            "threads": torch.get_num_threads(),
            "dtype": args.dtype,
            "batch_size": args.batch_size,
        }
        args.json.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
