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
  fastv                               scoring (last token's attention from one layer's q / k, RoPE), per-image top-K,
                                      gathering hidden states / rotary tables and the pruned mask, on the LLM shape of
                                      the same config with a prompt of P image tokens + 40 text tokens (no weights)
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

from vistog_bench.model.shapes import shape_config
from vistog_bench.profiling.timers import time_repeats
from vistog_bench.model.vision import VisToGVisionTower
from vistog_bench.reducers import PoolReducer, PruMergeReducer, RandomReducer, ToMeMerge, VisionZipReducer
from vistog_bench.reducers.fastv import gather_rows, kept_positions, last_token_attention
from vistog_bench.reducers.tome import merge_schedule

TEXT_TOKENS = 40  # a short LLaVA-1.5 question around the image


def summary(times: list[float]) -> dict:
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"min_ms": min(times), "median_ms": median, "q1_ms": q1, "q3_ms": q3, "repeats": len(times)}


class RecordingMerge:
    """Wraps a ToMeMerge and keeps the inputs of each call, to replay the merges alone."""

    def __init__(self, merge: ToMeMerge):
        self.merge, self.calls = merge, []

    def __call__(self, layer_index, hidden_states, key, sizes):
        self.calls.append((layer_index, hidden_states.clone(), key.clone(), sizes.clone()))
        return self.merge(layer_index, hidden_states, key, sizes)


def fastv_work(config, budget: int, batch: int, device: str, dtype: torch.dtype):
    """A closure doing FastV's own work once on the LLM shape of `config` (random q / k / hidden states)."""
    text = config.text_config
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = text.hidden_size // heads
    patches = config.num_patches
    length = patches + TEXT_TOKENS
    generator = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    query, key, hidden = rand(batch, 1, heads * head_dim), rand(batch, length, kv_heads * head_dim), rand(
        batch, length, text.hidden_size
    )
    cos, sin = rand(1, length, head_dim), rand(1, length, head_dim)
    padding = torch.ones(batch, length, dtype=torch.bool, device=device)
    image_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    image_mask[:, 5 : 5 + patches] = True  # "<s> USER :" before the image, as the LLaVA-1.5 prompt

    def work():
        attention = last_token_attention(
            query, key, (cos, sin), padding, head_dim=head_dim, kv_groups=heads // kv_heads, scaling=head_dim**-0.5
        )
        keep, kept_mask = kept_positions(attention, image_mask, padding, num_patches=patches, budget=budget)
        pruned = gather_rows(hidden, keep)
        gather_rows(cos, keep), gather_rows(sin, keep)
        create_causal_mask(config=text, inputs_embeds=pruned, attention_mask=kept_mask, cache=None)

    return work


def bench_shape(shape: str, budgets: list[int], args) -> list[dict]:
    config = shape_config(shape)
    config.text_config._attn_implementation = "sdpa"
    device, dtype = args.device, getattr(torch, args.dtype)
    vision = config.vision_config
    torch.manual_seed(0)
    tower = VisToGVisionTower(vision).to(device, dtype).eval()
    pixels = torch.randn(args.batch_size, 3, vision.image_size, vision.image_size, device=device, dtype=dtype)
    feature_layer = config.vision_feature_layer
    num_layers = tower.layers_to_run(feature_layer)
    patches, grid = config.num_patches, vision.image_size // vision.patch_size
    with torch.no_grad():
        states = tower(pixels, feature_layer, with_cls_attention=True)
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
        reducers = {
            "pool": PoolReducer(budget, grid),
            "random": RandomReducer(budget, patches, seed=0),
            "visionzip": VisionZipReducer(budget, patches, vision.num_attention_heads),
            "prumerge": PruMergeReducer(budget, patches, tower.encoder.layers[num_layers]),
        }
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
        tower.token_merge = None

        record("fastv", budget, run(fastv_work(config, budget, args.batch_size, device, dtype)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,llava-1.5-7b")
    parser.add_argument("--budgets", default="192,128,64,16")
    parser.add_argument("--batch-size", type=int, default=1)
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
