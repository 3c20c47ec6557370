"""The commands a user types, on checkpoints laid out exactly as llava-hf/llava-1.5-7b-hf is (hub layout and the
transformers-5 re-saved layout; vistog_bench.testing.hub_checkpoints says which published files each copies): the main
job with every method, lmms-eval's own CLI against its llava_hf (chat by default, simple with --force_simple), and
`vistog-bench train` -> `vistog-bench run` with the prompt the checkpoint was trained with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistog_bench.model import VisToGForConditionalGeneration, build_inputs, load_checkpoint
from vistog_bench.model.prompting import VICUNA_CHAT_TEMPLATE, PromptBuilder, Turn, find_template
from vistog_bench.testing.hub_checkpoints import LLAVA_HF_CHAT_TEMPLATE

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def layouts(llava_hf_layouts, tmp_path_factory):
    root = tmp_path_factory.mktemp("vistog-from-llava-hf")
    found = dict(llava_hf_layouts)
    for name in ("hub", "resaved"):  # a VisToG-64 checkpoint made from each layout (what `train` starts from)
        model, processor = load_checkpoint(found[name])
        torch.manual_seed(0)
        out = root / f"vistog64-{name}"
        VisToGForConditionalGeneration.from_llava(model, num_semantic_tokens=64).save_pretrained(out)
        processor.save_pretrained(out)
        found[f"vistog64-{name}"] = out
    return found


def run(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=900)


def only_run_dir(output: Path) -> Path:
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.parametrize("layout", ["hub", "resaved"])
def test_main_job_every_method_every_cell_ok(layouts, layout, tmp_path):
    result = run(
        "-m",
        "vistog_bench.cli",
        "run",
        "--model",
        str(layouts[layout]),
        str(layouts[f"vistog64-{layout}"]),
        "--method",
        "none,vistog,pool,visionzip,fastv",
        "--budgets",
        "576,64",
        "--tasks",
        "shapes_vqa",
        "--limit",
        "3",
        "--output",
        str(tmp_path / "results"),
        "--no-report",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run_dir(tmp_path / "results")
    cells = json.loads((run_dir / "metrics.json").read_text())
    cells = cells["cells"] if isinstance(cells, dict) else cells
    assert {(c["method"], c["budget"]) for c in cells} == {
        ("none", 576),
        ("vistog", 64),
        ("pool", 64),
        ("visionzip", 64),
        ("fastv", 64),
    }
    assert all(c["status"] == "ok" and c["n_samples"] == 3 for c in cells)
    for path in (run_dir / "samples").glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == 3
        for line in lines:
            question = line["arguments"][0]
            assert question in line["prompt"] and line["prompt"].count("<image>") == line["image_placeholders"] == 1
            assert line["prompt"] == f"USER: <image>\n{question} ASSISTANT:"
    templates = json.loads((run_dir / "manifest.json").read_text())["prompt_templates"]
    assert templates[str(layouts[layout])]["style"] == "structured"


@pytest.fixture(scope="module")
def pope_mirror(tmp_path_factory):
    """A local mirror of lmms-lab/POPE (its dataset card's columns; vistog_bench.testing.fixtures) for `pope_local`: a
    task without a class of its own, so lmms-eval's chat mode builds `doc_to_messages` requests for it."""
    from vistog_bench.testing.fixtures import write_fixture

    return write_fixture(tmp_path_factory.mktemp("mirror"), rows=2, only=["pope"])


def lmms_eval_answers(tmp_path: Path, mirror: Path, model: str, model_args: str, *extra: str) -> list[str]:
    out = tmp_path / f"{model}-{abs(hash((model_args, extra)))}"
    tasks = run("-m", "vistog_bench.cli", "tasks", "--path").stdout.strip()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmms_eval",
            "eval",
            "--model",
            model,
            "--model_args",
            model_args,
            "--tasks",
            "pope_local",
            "--include_path",
            tasks,
            "--limit",
            "4",
            "--device",
            "cpu",
            "--log_samples",
            "--output_path",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**ENV, "VISTOG_DATA_DIR": str(mirror)},
        timeout=900,
    )
    files = sorted(out.rglob("*samples_pope_local*.jsonl"))
    assert files, f"lmms-eval wrote no samples (exit {result.returncode}): {result.stderr[-3000:]}"
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    answers = [line["filtered_resps"] for line in sorted(lines, key=lambda x: x["doc_id"])]
    return [a[0] if isinstance(a, list) else a for a in answers]


@pytest.mark.parametrize(
    "layout,extra",
    [("hub", ()), ("resaved", ()), ("no-template", ("--force_simple",))],
    ids=["chat-hub", "chat-resaved", "simple"],
)
def test_lmms_eval_cli_vistog_equals_its_llava_hf(layouts, pope_mirror, layout, extra, tmp_path):
    path = layouts[layout]
    ours = lmms_eval_answers(
        tmp_path, pope_mirror, "vistog", f"pretrained={path},method=none,budget=576,dtype=float32", *extra
    )
    reference = lmms_eval_answers(
        tmp_path, pope_mirror, "llava_hf", f"pretrained={path},device_map=cpu,dtype=float32", *extra
    )
    assert len(ours) == 4 and ours == reference
    batched = lmms_eval_answers(
        tmp_path, pope_mirror, "vistog", f"pretrained={path},method=none,budget=576", "--batch_size", "3", *extra
    )
    assert batched == ours


def write_llava_data(folder: Path, count: int = 4) -> Path:
    """LLaVA-1.5's own instruction format (llava_v1_5_mix665k.json): id, image (relative path), conversations."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    records = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(folder / "images" / f"{i:06d}.jpg")
        records.append(
            {
                "id": f"{i:06d}",
                "image": f"images/{i:06d}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                    {"from": "gpt", "value": "red"},
                    {"from": "human", "value": "How many shapes are there?"},
                    {"from": "gpt", "value": "two"},
                ],
            }
        )
    path = folder / "llava_mix.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("layout,template", [("hub", LLAVA_HF_CHAT_TEMPLATE), ("no-template", VICUNA_CHAT_TEMPLATE)])
def test_trained_checkpoint_is_evaluated_with_its_training_prompt(layouts, layout, template, tmp_path):
    from vistog_bench.train.data import ConversationDataset

    data = write_llava_data(tmp_path / "data")
    out = tmp_path / "trained"
    result = run(
        "-m",
        "vistog_bench.cli",
        "train",
        "--stage",
        "vistog-stage1",
        "--model",
        str(layouts[layout]),
        "--num-semantic-tokens",
        "16",
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "chat_template.jinja").read_text() == template

    # the tokens training fed for round 0's prompt are the tokens evaluation feeds
    model, processor = load_checkpoint(out)
    prompts = PromptBuilder(find_template(processor, out), processor.tokenizer)
    dataset = ConversationDataset(json.loads(data.read_text()), data.parent, processor, prompts, 16, 4096)
    input_ids, labels = dataset.encode(dataset.records[0])
    first_answer = next(i for i, label in enumerate(labels) if label != -100)
    eval_prompt = prompts.generation_prompt([Turn("user", "What colour is the shape?", 1)])
    image = Image.open(data.parent / "images/000000.jpg")
    eval_ids = build_inputs(processor, [eval_prompt], [[image]], 16)["input_ids"][0].tolist()
    assert input_ids[:first_answer] == eval_ids

    runs = tmp_path / "results"
    result = run(
        "-m",
        "vistog_bench.cli",
        "run",
        "--model",
        str(out),
        "--method",
        "vistog",
        "--tasks",
        "shapes_vqa",
        "--limit",
        "2",
        "--output",
        str(runs),
        "--no-report",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run_dir(runs)
    (samples,) = (run_dir / "samples").glob("*.jsonl")
    line = json.loads(samples.read_text().splitlines()[0])
    assert line["prompt"] == prompts.generation_prompt([Turn("user", line["arguments"][0], 1)])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["prompt_templates"][str(out)]["source"] == str(out / "chat_template.jinja")
