"""Vision encoder cost of VisToG's semantic tokens: N semantic tokens with isolated attention vs stock CLIP.

    python benchmarks/vision_encoder.py --shape llava-1.5-7b --num-semantic-tokens 64 --repeats 5 [--device cuda]

Same random weights and inputs for all three; median over repeats after warm-up:
  stock-hf     transformers' CLIPVisionModel, all layers, hidden states kept (what LLaVA's HF code runs)
  stock        our tower with VisToG off: the same layers up to LLaVA's feature layer (-2)
  vistog       our tower with N semantic tokens and isolated attention, up to the feature layer
Target: vistog / stock <= 1.15 (the FLOP ratio at N = 64 is 641 / 577 = 1.11).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import CLIPVisionModel

from vistog_bench.model.presets import preset_config
from vistog_bench.model.vision import VisToGVisionTower
from vistog_bench.profiling.timers import time_repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llava-1.5-7b")
    parser.add_argument("--num-semantic-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    vision_config = preset_config(args.shape).vision_config
    torch.manual_seed(0)
    stock_hf = CLIPVisionModel(vision_config).to(args.device, dtype).eval()
    stock = VisToGVisionTower(vision_config).to(args.device, dtype).eval()
    stock.load_state_dict(stock_hf.state_dict())
    vistog = VisToGVisionTower(vision_config, num_semantic_tokens=args.num_semantic_tokens).to(args.device, dtype)
    vistog.load_state_dict(stock_hf.state_dict(), strict=False)
    vistog.eval()
    size = vision_config.image_size
    pixels = torch.randn(args.batch_size, 3, size, size, device=args.device, dtype=dtype)

    runs = {
        "stock-hf": lambda: stock_hf(pixels, output_hidden_states=True),
        "stock": lambda: stock(pixels),
        "vistog": lambda: vistog(pixels),
    }
    medians = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            times = time_repeats(fn, args.device, args.warmup, args.repeats)
            medians[name] = statistics.median(times)
            print(
                f"{name:9s} median {medians[name]:9.2f} ms  min {min(times):9.2f}  "
                f"max {max(times):9.2f}  (n={len(times)})"
            )
    patches = vision_config.image_size // vision_config.patch_size
    flop_ratio = (patches**2 + 1 + args.num_semantic_tokens) / (patches**2 + 1)
    print(
        f"{args.shape} {args.device} {args.dtype} batch {args.batch_size}: vistog/stock = "
        f"{medians['vistog'] / medians['stock']:.3f}, vistog/stock-hf = {medians['vistog'] / medians['stock-hf']:.3f} "
        f"(token ratio {flop_ratio:.3f}; target <= 1.15)"
    )


if __name__ == "__main__":
    main()
