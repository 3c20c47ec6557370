"""The trainer on VisToG over LLaVA-NeXT (CLIP, anyres tiles) and LLaVA-OneVision (SigLIP), on the tiny hub-layout
checkpoints: a training sample's prompt is evaluation's (views x N placeholders), stage 1 trains exactly the semantic
tokens, grouping layer and projector (frozen weights bit-identical), stage 2 the LLM too, the saved folder loads and
the adapter serves the in-memory model's answers, the CLI path works and refuses what it cannot train in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vistog_bench.errors import UsageError
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import image_token_id
from vistog_bench.model.loading import load_processor
from vistog_bench.model.modeling_views import VisToGViews
from vistog_bench.model.prompting import PromptBuilder, Turn, find_template, image_token_of
from vistog_bench.testing.hub_checkpoints_families import write_llava_next, write_llava_onevision, write_qwen2_5_vl
from vistog_bench.train import TrainConfig, loop, train
from vistog_bench.train.cli import run_cli
from vistog_bench.train.configs import fsdp_launch_env
from vistog_bench.train.data import IGNORE_INDEX, collate_conversations, load_records
from vistog_bench.train.loop import make_optimizer
from vistog_bench.train.stages import conversation_dataset, load_for_stage

WRITERS = {"llava-next": write_llava_next, "llava-onevision": write_llava_onevision}
N = 8
# (height, width): NeXT gives 3 / 3 / 3 / 5 views (base + tiles of 336x672, 672x336, 1008x336 grids ...), OneVision
# more; a text-only sample joins them, so batches mix view counts and modalities
SIZES = [(300, 400), (336, 700), (500, 200), (700, 690), (200, 260)]
WORDS = ("red", "green", "blue", "yellow", "purple")
QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families-train")
    return {name: write(root / name) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families-data")
    rng = np.random.default_rng(0)
    records = []
    for i, size in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        question = f"<image>\n{QUESTION}" if i % 2 == 0 else f"{QUESTION}\n<image>"  # LLaVA data writes both
        records.append(
            {
                "id": str(i),
                "image": f"{i}.png",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": WORDS[i]}],
            }
        )
    records.append(
        {"id": "text", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "red"}]}
    )
    (folder / "data.json").write_text(json.dumps(records))
    return folder / "data.json"


def config(checkpoint, data, output, **values) -> TrainConfig:
    base = dict(
        stage="vistog-stage1",
        model=str(checkpoint),
        data=str(data),
        output_dir=str(output),
        num_semantic_tokens=N,
        batch_size=2,
        lr=1e-2,
        max_steps=3,
        warmup_ratio=0.0,
        log_every=1,
        seed=0,
        threads=1,
        quiet=True,
        progress=False,
    )
    return TrainConfig(**{**base, **values})


def trained(cfg: TrainConfig):
    """train(cfg) and the model it trained, in memory (the model `load_for_stage` gave the loop)."""
    models = []

    def recording(config):
        models.append(load_for_stage(config))
        return models[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "load_for_stage", recording)
        result = train(cfg)
    return result, models[0]


def stock_state(path) -> dict:
    model, _ = load_checkpoint(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def expected_trained(stage: str) -> tuple[str, ...]:
    """Prefixes of the per-view VisToG model's state-dict keys a stage trains."""
    stage1 = ("semantic_tokens", "grouping.", "model.multi_modal_projector.")
    return stage1 + (("model.language_model.", "lm_head.") if stage == "vistog-stage2" else ())


@pytest.fixture(scope="module")
def stage1(checkpoints, data, tmp_path_factory):
    """Three steps of stage 1 on each family: (output folder, result, in-memory model)."""
    runs = {}
    for name, checkpoint in checkpoints.items():
        output = tmp_path_factory.mktemp(f"{name}-stage1")
        result, model = trained(config(checkpoint, data, output))
        runs[name] = (output, result, model)
    return runs


@pytest.mark.parametrize("name", WRITERS)
def test_training_prompt_is_the_evaluation_prompt(checkpoints, data, name):
    """Sample 0's ids up to its answer equal the model's `inputs` for the same image and question (views x N
    placeholders), the labels keep only the answer and eos, and a batch carries each image's views."""
    cfg = config(checkpoints[name], data, "unused")
    model = load_for_stage(cfg)
    processor = load_processor(checkpoints[name])
    prompts = PromptBuilder(find_template(processor, checkpoints[name]), processor.tokenizer, image_token_of(processor))
    dataset = conversation_dataset(cfg, model, load_records(data, cfg.stage), data.parent, processor, prompts)
    item = dataset[0]
    image = Image.open(data.parent / "0.png")
    prompt = prompts.generation_prompt([Turn("user", f"<image>\n{QUESTION}")])
    evaluation = model.inputs(processor, [prompt], [[image]])
    views = model.views_per_image(evaluation["image_sizes"])
    assert views[0] > 1  # anyres tiles: more than the base view
    ids = evaluation["input_ids"][0][evaluation["attention_mask"][0].bool()]
    assert torch.equal(item["input_ids"][: len(ids)], ids)
    assert int((item["input_ids"] == image_token_id(model)).sum()) == views[0] * N
    assert item["labels"][: len(ids)].eq(IGNORE_INDEX).all()
    assert torch.equal(item["labels"][len(ids) :], item["input_ids"][len(ids) :])
    assert item["labels"][-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(item["labels"][len(ids) : -1]) == WORDS[0]  # no stray space before it
    assert torch.equal(item["pixel_values"], evaluation["pixel_values"][0, : views[0]])
    batch = collate_conversations([dataset[i] for i in (1, 5, 3)], pad_token_id=0)  # image, text-only, image
    batch.pop("skipped")
    sizes = batch["image_sizes"]
    assert sizes.shape == (2, 2) and batch["pixel_values"].shape[0] == sum(model.views_per_image(sizes))
    first, second = model.view_tokens.counts(sizes)
    assert (batch["input_ids"] == image_token_id(model)).sum(1).tolist() == [first, 0, second]
    model.train()
    assert torch.isfinite(model(**batch).loss)
    # a text-only batch in stage 1 (LLM frozen): the VisToG parts are in the graph with zero gradients
    text_only = collate_conversations([dataset[5], dataset[5]], pad_token_id=0)
    text_only.pop("skipped")
    model.zero_grad()
    model(**text_only).loss.backward()
    assert model.semantic_tokens.grad is not None and not model.semantic_tokens.grad.any()
    assert all(p.grad is not None and not p.grad.any() for p in model.grouping.parameters())
    # LLaVA's alignment format (the stage-1 recipes): `<image>{caption}\n`, the same views x N, loss on the caption
    plain = conversation_dataset(
        dataclasses.replace(cfg, data_format="plain"),
        model,
        load_records(data, cfg.stage),
        data.parent,
        processor,
        prompts,
    )[0]
    assert int((plain["input_ids"] == image_token_id(model)).sum()) == views[0] * N
    assert processor.tokenizer.decode(plain["input_ids"][plain["labels"] != IGNORE_INDEX]).strip() == WORDS[0]


@pytest.mark.parametrize("name", WRITERS)
def test_stage1_trains_the_vistog_parts_and_projector_only(checkpoints, data, stage1, name):
    output, result, model = stage1[name]
    assert result.steps == 3 and np.isfinite(result.losses).all() and len(set(result.losses)) > 1
    before = stock_state(checkpoints[name])
    after = model.state_dict()
    prefixes = expected_trained("vistog-stage1")
    for key, value in before.items():
        changed = not torch.equal(after[key], value)
        assert changed == key.startswith("model.multi_modal_projector."), key
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {
        k for k, _ in model.named_parameters() if k.startswith(prefixes)
    }
    fresh = load_for_stage(config(checkpoints[name], data, output))
    assert not torch.equal(fresh.semantic_tokens, model.semantic_tokens)  # trained away from the seeded start
    optimizer = make_optimizer(config(checkpoints[name], "unused", "unused"), fresh)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for k, p in fresh.named_parameters() if k.startswith(prefixes)
    }


@pytest.mark.parametrize("name", WRITERS)
def test_saved_checkpoint_serves_the_in_memory_answers(checkpoints, stage1, name):
    from lmms_eval.api.instance import Instance

    from vistog_bench.adapter import VisToGChatLMM

    output, _, model = stage1[name]
    loaded, _ = load_checkpoint(output)
    assert isinstance(loaded, VisToGViews) and loaded.num_semantic_tokens == N
    saved, memory = loaded.state_dict(), model.state_dict()
    assert saved.keys() == memory.keys() and all(torch.equal(saved[k], memory[k]) for k in saved)
    lm = VisToGChatLMM(pretrained=str(output), method="vistog", device="cpu")
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (420, 380, 3), dtype=np.uint8))
    lm.task_dict = {"toy": {"test": [{"image": image}]}}

    def doc_to_messages(doc):
        return [
            {"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": QUESTION}]}
        ]

    request = Instance(
        "generate_until",
        ("", doc_to_messages, {"max_new_tokens": 5, "temperature": 0}, 0, "toy", "test"),
        0,
        {"task": "toy", "doc_id": 0, "repeats": 1},
    )
    served = lm.generate_until([request])[0].text
    processor = load_processor(checkpoints[name])  # the template training rendered with
    prompts = PromptBuilder(find_template(processor, checkpoints[name]), processor.tokenizer, image_token_of(processor))
    inputs = model.eval().inputs(processor, [prompts.generation_prompt([Turn("user", QUESTION, 1)])], [[image]])
    inputs.pop("visual_tokens_unreduced")
    ids = model.generate(
        **inputs,
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
    )
    assert served == processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert lm.take_sample_log()[0]["visual_tokens"] == [model.view_tokens.counts(inputs["image_sizes"])[0]]


@pytest.mark.parametrize("name", WRITERS)
def test_stage2_trains_the_llm_too(checkpoints, data, stage1, tmp_path, name):
    output, _, stage1_model = stage1[name]
    result, model = trained(
        config(output, data, tmp_path, stage="vistog-stage2", num_semantic_tokens=None, grouping_lr=1e-2, lr=1e-3)
    )
    assert np.isfinite(result.losses).all()
    before, after = stage1_model.state_dict(), model.state_dict()
    prefixes = expected_trained("vistog-stage2")
    for key, value in before.items():
        assert (not torch.equal(after[key], value)) == key.startswith(prefixes), key
    optimizer = make_optimizer(config(output, data, tmp_path, stage="vistog-stage2", grouping_lr=1e-2), model)
    grouping = {id(p) for k, p in model.named_parameters() if k.startswith(("semantic_tokens", "grouping."))}
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == grouping  # at --grouping-lr
    with pytest.raises(UsageError, match=f"has {N} semantic tokens, --num-semantic-tokens asks 4"):
        load_for_stage(config(output, data, tmp_path, stage="vistog-stage2", num_semantic_tokens=4))


def test_cli_trains_a_next_checkpoint_and_refuses_what_it_cannot(checkpoints, data, tmp_path, capsys):
    """`vistog-bench train --stage vistog-stage1 --model <next> --num-semantic-tokens 8 ...` (the CLI in-process)."""
    out = tmp_path / "cli"
    common = [
        "--data",
        str(data),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--no-progress",
    ]
    code = run_cli(
        [
            "--stage",
            "vistog-stage1",
            "--model",
            str(checkpoints["llava-next"]),
            "--num-semantic-tokens",
            str(N),
            "--output-dir",
            str(out),
            *common,
        ]
    )
    assert code == 0
    summary = json.loads((out / "training_log.jsonl").read_text().splitlines()[-1])
    assert summary["steps"] == 2 and np.isfinite(summary["last_loss"])
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "vistog_llava_next" and saved["num_semantic_tokens"] == N
    assert isinstance(load_checkpoint(out)[0], VisToGViews)
    # stage 2's recipe from the stage-1 folder (its N; one process, no bf16 autocast on this CPU test)
    code = run_cli(
        [
            "--recipe",
            "vistog-next-7b-stage2",
            "--model",
            str(out),
            "--num-semantic-tokens",
            str(N),
            "--output-dir",
            str(tmp_path / "recipe"),
            "--mixed-precision",
            "no",
            "--num-workers",
            "0",
            *common,
        ]
    )
    assert (
        code == 0
        and json.loads((tmp_path / "recipe" / "training_log.jsonl").read_text().splitlines()[-1])["stage"]
        == "vistog-stage2"
    )
    capsys.readouterr()
    code = run_cli(
        [
            "--stage",
            "vistog-stage1",
            "--model",
            str(checkpoints["llava-onevision"]),
            "--output-dir",
            str(tmp_path / "x"),
            *common,
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "give --num-semantic-tokens N" in error
    qwen = write_qwen2_5_vl(tmp_path / "qwen")
    code = run_cli(
        [
            "--stage",
            "vistog-stage1",
            "--model",
            str(qwen),
            "--num-semantic-tokens",
            str(N),
            "--output-dir",
            str(tmp_path / "y"),
            *common,
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "holds a 'qwen2_5_vl' model" in error


def test_gradient_checkpointing_changes_no_loss(checkpoints, data, stage1, tmp_path):
    _, plain, _ = stage1["llava-next"]
    result, model = trained(config(checkpoints["llava-next"], data, tmp_path, gradient_checkpointing=True))
    assert model.is_activation_checkpointing
    assert np.allclose(result.losses, plain.losses, rtol=1e-5)


@pytest.mark.parametrize("engine", ["MULTI_CPU", "FSDP"])
def test_two_processes_train_when_a_rank_gets_a_text_only_batch(checkpoints, data, tmp_path, engine):
    """DDP (plain torchrun, accelerate's MULTI_CPU) and FSDP2 (fsdp2.yaml's settings) over gloo, batch 1: in one epoch
    of the six samples some rank's batch is the text-only one, and every trainable part is still reduced; FSDP2
    shards the per-view VisToG model (units: the LLM's decoder layers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "vistog_bench.train",
        "--stage",
        "vistog-stage1",
        "--model",
        str(checkpoints["llava-next"]),
        "--num-semantic-tokens",
        str(N),
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--batch-size",
        "1",
        "--max-steps",
        "3",
        "--warmup-ratio",
        "0",
        "--threads",
        "1",
        "--quiet",
        "--no-progress",
    ]
    launch = fsdp_launch_env() if engine == "FSDP" else {}
    result = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1", **launch}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    summary = log[-1]
    assert summary["processes"] == 2 and summary["steps"] == 3 and np.isfinite(summary["last_loss"])
    assert summary["distributed_type"] == engine
    assert (log[0]["parameters_held"] < log[0]["parameters"]) == (engine == "FSDP")
