"""The selection's own milliseconds of the reducers that run at the LLM input of LLaVA-NeXT, LLaVA-OneVision and
Qwen2.5-VL (reducers/families.py), on their 7B shapes, for one image:

    python benchmarks/family_reducer_overhead.py --image-size 672x672 --percent 25 --repeats 10 --threads 1

One image of the given size gives V visual tokens (profiling.flops.family_image_geometry, as the processors count
them); the prompt is those V tokens + 64 text tokens of LLM width D with random states; each method chooses
K = round(V x percent / 100) of the run (`RunSelector.choose`, the call the layer-0 stage makes per image). The
CLS / mean-attention scores of visionzip / vispruner read the encoder and are measured apart (their cost is one
encoder layer's q / k, see docs/reducers.md "On other families"). Minimum and median of `--repeats` timings after
`--warmup`, perf_counter on the CPU, CUDA events with --device cuda.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import torch

from vistog_bench.model.presets import family_preset_config
from vistog_bench.profiling.flops import family_image_geometry
from vistog_bench.profiling.timers import time_repeats
from vistog_bench.reducers.families import RunSelector

SHAPES = ("llava-next-7b", "llava-onevision-7b", "qwen2.5-vl-7b")
METHODS = ("random", "divprune", "cdpruner")
TEXT_TOKENS = 64


def measure(shape: str, height: int, width: int, percent: int, device: str, warmup: int, repeats: int) -> list[dict]:
    config = family_preset_config(shape)
    tokens = family_image_geometry(config, height, width).tokens
    width_llm = config.text_config.hidden_size
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens + TEXT_TOKENS, width_llm, generator=generator).to(device)  # [T, D]
    run = torch.arange(tokens, device=device)  # the image's positions [V]
    instruction = torch.arange(tokens, tokens + TEXT_TOKENS, device=device)  # the text after it [t]
    keep = max(1, round(tokens * percent / 100))
    rows = []
    for method in METHODS:
        choose = functools.partial(RunSelector(method).choose, hidden, run, keep, instruction, 0)
        times = time_repeats(choose, device, warmup, repeats)
        rows.append(
            {
                "shape": shape,
                "method": method,
                "visual_tokens": tokens,
                "kept": keep,
                "width": width_llm,
                "min_ms": round(min(times), 2),
                "median_ms": round(statistics.median(times), 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", default="672x672", help="H x W in pixels")
    parser.add_argument("--percent", type=int, default=25, help="tokens kept, percent of the image's own count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON line per row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    for shape in SHAPES:
        for row in measure(shape, height, width, args.percent, args.device, args.warmup, args.repeats):
            print(
                json.dumps(row)
                if args.json
                else f"{row['shape']:>20} {row['method']:>9}: {row['visual_tokens']} -> {row['kept']} tokens "
                f"(D={row['width']}): min {row['min_ms']} ms, median {row['median_ms']} ms"
            )


if __name__ == "__main__":
    main()
