"""Fingerprint of what sweeps answer, timings aside: the proof that a refactor changed no result.

Runs a fixed set of sweeps through the CLI, on checkpoints and data this script writes itself (seeded), and writes
one JSON: per sweep, metrics.json without its timing fields and every sample's answer and token counts. Two
fingerprints taken before and after a change must be equal byte for byte (`--compare A B`).

    python benchmarks/answers_fingerprint.py --out /tmp/before.json
    python benchmarks/answers_fingerprint.py --out /tmp/after.json
    python benchmarks/answers_fingerprint.py --compare /tmp/before.json /tmp/after.json

The sweeps: the embedded default; LLaVA-1.5 in the hub layout with every method at 576 / 64 on gqa_local (the
layer-mean ones at 576 / 256, which the 3-layer tiny LLM allows); LLaVA-NeXT, OneVision and Qwen2.5-VL (hub layouts)
with none and two reducers on gqa_local; OneVision and Qwen2.5-VL on the video task videomme_local.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Fields whose values are clocks, memory or machine facts: they differ between runs of the same code.
VOLATILE = ("_ms", "_s", "_bytes", "_j", "elapsed", "time", "date", "started", "ended", "host", "pid", "version")
LLAVA_METHODS = "none,pool,random,tome,visionzip,prumerge,fastv,divprune,vispruner,cdpruner,vscan"
# methods whose budget is a mean over decoder layers: on the 3-layer tiny LLM their mean is at least 193
LAYER_MEAN_METHODS = "none,dart,pdrop,sparsevlm"


def _volatile(key: str) -> bool:
    return any(mark in key for mark in VOLATILE)


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if not _volatile(k)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _vistog_bench(*args: str, env: dict) -> None:
    command = [str(Path(sys.executable).parent / "vistog-bench"), "run", *args, "--no-report"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"answers_fingerprint: {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def _digest(run_root: Path) -> dict:
    (run_dir,) = [p for p in run_root.iterdir() if p.is_dir()]
    samples = {}
    for path in sorted((run_dir / "samples").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples[path.name] = [_stable(row) for row in rows]
    return {"metrics": _stable(json.loads((run_dir / "metrics.json").read_text())), "samples": samples}


def fingerprint(work: Path) -> dict:
    from vistog_bench.testing.fixtures import write_fixture
    from vistog_bench.testing.hub_checkpoints import write_layouts
    from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    data = write_fixture(work / "data", rows=4)
    llava = write_layouts(work / "llava")["hub"]
    families = write_family_layouts(work / "families")
    local = ("--data-dir", str(data), "--limit", "4", "--seed", "0")
    sweeps = {
        "embedded default": (),
        "llava-1.5 hub, every method": (
            "--model",
            str(llava),
            "--tasks",
            "gqa_local",
            "--budgets",
            "576,64",
            "--method",
            LLAVA_METHODS,
            *local,
        ),
        "llava-1.5 hub, layer-mean methods": (
            "--model",
            str(llava),
            "--tasks",
            "gqa_local",
            "--budgets",
            "576,256",
            "--method",
            LAYER_MEAN_METHODS,
            *local,
        ),
    }
    for name, path in sorted(families.items()):
        budgets = "50,25" if "qwen" in name else "256,64"
        sweeps[f"{name}, none + two reducers"] = (
            "--model",
            str(path),
            "--tasks",
            "gqa_local",
            "--budgets",
            budgets,
            "--method",
            "none,random,divprune",
            *local,
        )
        if "next" not in name:
            sweeps[f"{name}, video"] = (
                "--model",
                str(path),
                "--tasks",
                "videomme_local",
                "--budgets",
                budgets,
                "--method",
                "none,random",
                *local,
            )
    result = {}
    for index, (name, args) in enumerate(sweeps.items()):
        out = work / f"run-{index}"
        _vistog_bench(*args, "--output", str(out), env=env)
        result[name] = _digest(out)
        print(f"answers_fingerprint: {name}: {len(result[name]['samples'])} sample files", file=sys.stderr)
    return result


def _shared_fields(left: dict, right: dict, added: set[str]) -> tuple[dict, dict]:
    """Both sweeps' metrics records on the fields both sides record (fields one side adds are named in `added`)."""
    out = []
    for a, b in zip(left["metrics"], right["metrics"], strict=False):
        added |= a.keys() ^ b.keys()
        out.append(({k: a[k] for k in a.keys() & b.keys()}, {k: b[k] for k in a.keys() & b.keys()}))
    if len(left["metrics"]) != len(right["metrics"]):
        return left, right
    return ({**left, "metrics": [a for a, _ in out]}, {**right, "metrics": [b for _, b in out]})


def _cell_differences(left: dict, right: dict) -> list[str]:
    """The cells of one sweep whose record or sample file differs: `task method budget` or a samples file name."""

    def by_cell(metrics):
        return {f"{m['task']} {m['method']} {m['budget']}": m for m in metrics}

    cells_left, cells_right = by_cell(left["metrics"]), by_cell(right["metrics"])
    cells = [c for c in sorted(cells_left.keys() | cells_right.keys()) if cells_left.get(c) != cells_right.get(c)]
    names = sorted(left["samples"].keys() | right["samples"].keys())
    return cells + [n for n in names if left["samples"].get(n) != right["samples"].get(n)]


def compare(a: Path, b: Path) -> int:
    """Sweep by sweep, cell by cell, on the fields both fingerprints record (a field only one side has is listed)."""
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    added: set[str] = set()
    shared = {n: _shared_fields(left[n], right[n], added) for n in left.keys() & right.keys()}
    differing = [n for n in sorted(left.keys() | right.keys()) if n not in shared or shared[n][0] != shared[n][1]]
    for name in differing:
        where = _cell_differences(*shared[name]) if name in shared else ["missing on one side"]
        print(f"differs: {name}: {', '.join(where)}")
    if added:
        print(f"fields recorded on one side only (not compared): {', '.join(sorted(added))}")
    print(f"{len(shared) - len(set(differing) & shared.keys())} of {len(left.keys() | right.keys())} sweeps identical")
    return 1 if differing else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where to write the fingerprint JSON")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("give --out FILE or --compare A B")
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as work:
        args.out.write_text(json.dumps(fingerprint(Path(work)), indent=1, sort_keys=True) + "\n")
    print(f"answers_fingerprint: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
