"""The embedded default: the shapes world, its tasks, the trainer and the committed tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vistog_bench import demo
from vistog_bench.demo import build, world
from vistog_bench.demo.evaluate import evaluate_vqa
from vistog_bench.errors import UsageError
from vistog_bench.run.tasks import PROJECT_TASKS
from vistog_bench.train import TrainConfig, train
from vistog_bench.train.cli import run_cli
from vistog_bench.train.stages import patch_regions

# The targets, checked on a fixed subset (test split, first SUBSET_IMAGES images, 4 questions each): full
# budget >= 85 % VQA, the larger VisToG budget keeping >= 90 % of it. The committed weights measure 90 % and 91 % on
# it; the full held-out figures are in docs/demo.md.
SUBSET_IMAGES = 25
FULL_FLOOR = 0.85
RETENTION_FLOOR_LARGER_BUDGET = 0.90


# -- the world ---------------------------------------------------------------------------------------------------------
def test_generator_is_deterministic():
    for split in world.SPLITS:
        for index in (0, 7, 123):
            a, b = world.image_sample(split, index), world.image_sample(split, index)
            assert a == b
            assert np.array_equal(np.asarray(world.render(a.scene)), np.asarray(world.render(b.scene)))
            va, vb = world.video_sample(split, index), world.video_sample(split, index)
            assert va == vb
            frames_a, frames_b = world.render_video(va), world.render_video(vb)
            assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(frames_a, frames_b, strict=True))


def test_splits_never_share_a_seed():
    seeds = {
        split: {world.sample_seed(split, i, kind) for i in range(2000) for kind in ("image", "video")}
        for split in world.SPLITS
    }
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    assert world.image_sample("train", 0).scene != world.image_sample("test", 0).scene


def _read_scene_from_pixels(image) -> dict[int, tuple[str, str]]:
    """cell -> (colour, shape), recovered from the drawn pixels alone."""
    pixels = np.asarray(image).astype(int)
    palette = {name: np.array(rgb) for name, rgb in world.COLOURS.items()}

    def colour_at(x: float, y: float) -> str | None:
        value = pixels[int(round(y)), int(round(x))]
        for name, rgb in palette.items():
            if np.abs(value - rgb).max() <= 2:
                return name
        return None

    found = {}
    for cell in range(9):
        x, y = world.cell_centre(cell)
        colour = colour_at(x, y)
        if colour is None:
            continue
        # every large shape reaches 10 px below its centre (circle 14, square 11.9, triangle base 11.2), no small one
        r = world.SIZES["large" if colour_at(x, y + 10) == colour else "small"]
        # probes: a square fills its corners, a circle its diagonals but not corners, a triangle neither
        if colour_at(x - 0.8 * r, y - 0.8 * r) == colour:
            shape = "square"
        elif colour_at(x - 0.6 * r, y - 0.6 * r) == colour:
            shape = "circle"
        else:
            shape = "triangle"
        found[cell] = (colour, shape)
    return found


def _answer_from_pixels(found: dict[int, tuple[str, str]], question: world.Question) -> str:
    words = question.question.rstrip("?").split()
    if question.question_type == "count":
        if words[2] == "shapes":
            return str(len(found))
        return str(sum(shape + "s" == words[2] for _, shape in found.values()))
    if question.question_type in ("colour", "shape", "exist"):  # ... at the {position}?
        cell = world.POSITIONS.index(words[-1])
        if question.question_type == "exist":
            return "yes" if cell in found else "no"
        return found[cell][0 if question.question_type == "colour" else 1]
    if question.question_type == "position":  # Where is the {shape}? / Where is the {colour} object?
        if words[-1] == "object":
            return next(world.POSITIONS[c] for c, (colour, _) in found.items() if colour == words[-2])
        return next(world.POSITIONS[c] for c, (_, shape) in found.items() if shape == words[-1])
    raise AssertionError(question)


def test_answers_are_correct_by_construction():
    checked = 0
    for index in range(40):
        sample = world.image_sample("test", index)
        found = _read_scene_from_pixels(world.render(sample.scene))
        assert len(found) == len(sample.scene.shapes)
        for question in sample.questions:
            assert _answer_from_pixels(found, question) == question.answer, (sample.id, question)
            checked += 1
        assert sample.caption.startswith(world.NUMBER_WORDS[len(found)])
    assert checked >= 120


def test_video_answers_match_frames():
    for index in range(20):
        sample = world.video_sample("test", index)
        first, last = (_read_scene_from_pixels(f) for f in world.render_video(sample)[::2])
        if sample.question.question_type == "appear":
            (new,) = set(last.values()) - set(first.values())
            assert new[1] == sample.question.answer
        else:
            words = sample.question.question.split()
            target = (words[-3], words[-2])
            start = next(c for c, v in first.items() if v == target)
            end = next(c for c, v in last.items() if v == target)
            d_row, d_col = divmod(end, 3)[0] - divmod(start, 3)[0], end % 3 - start % 3
            assert world.MOTIONS[sample.question.answer] == (d_row, d_col)


def test_test_split_parquet(tmp_path, monkeypatch):
    from datasets import load_dataset

    monkeypatch.setenv("VISTOG_BENCH_CACHE", str(tmp_path))
    folder = demo.ensure_test_data()
    assert folder == tmp_path / "shapes" / demo.WORLD_VERSION / "test"
    vqa = load_dataset("parquet", data_files=str(demo.test_data_file("shapes_vqa")), split="train")
    row = vqa[0]
    assert set(row) >= {"question_id", "image", "question", "answer", "question_type"}
    assert row["image"].size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    sample = world.image_sample("test", 0)
    assert (row["question"], row["answer"]) == (sample.questions[0].question, sample.questions[0].answer)
    video = load_dataset("parquet", data_files=str(demo.test_data_file("shapes_video")), split="train")
    assert len(video[0]["video"]) == world.VIDEO_FRAMES


# -- the committed models ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subset_accuracy():
    from vistog_bench.model.loading import load_checkpoint

    results = {}
    for budget in (None, *demo.available_budgets()):
        model, processor = load_checkpoint(demo.checkpoint_for_budget(budget))
        results[budget] = evaluate_vqa(model, processor, "test", SUBSET_IMAGES)
    return results


def test_committed_checkpoints_are_complete():
    assert len(demo.available_budgets()) >= 2
    total = 0
    for name in demo.checkpoint_names():
        path = demo.checkpoint_dir(name)
        demo.check_weights(path)
        total += sum(f.stat().st_size for f in path.iterdir())
    assert total <= 30 * 2**20


def test_full_budget_reaches_target(subset_accuracy):
    assert subset_accuracy[None]["overall"] >= FULL_FLOOR, subset_accuracy[None]


def test_vistog_larger_budget_keeps_target(subset_accuracy):
    larger = max(demo.available_budgets())
    retention = subset_accuracy[larger]["overall"] / subset_accuracy[None]["overall"]
    assert retention >= RETENTION_FLOOR_LARGER_BUDGET, subset_accuracy


def test_vistog_models_have_their_budget():
    from vistog_bench.model.loading import load_checkpoint

    for budget in demo.available_budgets():
        model, _ = load_checkpoint(demo.checkpoint_for_budget(budget))
        assert model.num_visual_tokens == budget


# -- the trainer -------------------------------------------------------------------------------------------------------
def _config(**values) -> TrainConfig:
    defaults = dict(threads=1, quiet=True, progress=False, log_every=1, warmup_ratio=0.0, seed=0)
    return TrainConfig(**{**defaults, **values})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes-train")
    world.write_llava_training_data(folder, "val", num_images=8, num_clips=2)
    return folder


def _losses(output: Path) -> tuple[float, float]:
    lines = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    steps = [line["loss"] for line in lines if "step" in line and "of" in line]
    return steps[0], steps[-1]


def test_two_training_steps_decrease_the_loss(tiny_data, tmp_path):
    fresh = build.write_fresh_model(tmp_path / "fresh")
    out = tmp_path / "llava"
    config = _config(
        stage="llava",
        model=str(fresh),
        data=str(tiny_data / "conversations.json"),
        output_dir=str(out),
        max_steps=2,
        batch_size=10,
        lr=3e-3,
    )
    assert train(config).steps == 2
    first, last = _losses(out)
    assert last < first
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_parallel_data_and_loader_workers_change_nothing(tiny_data, tmp_path):
    drawn = world.write_llava_training_data(tmp_path / "data", "val", num_images=8, num_clips=2, workers=2)
    for file in sorted(tiny_data.rglob("*.*")):
        assert (drawn / file.relative_to(tiny_data)).read_bytes() == file.read_bytes(), file
    fresh = build.write_fresh_model(tmp_path / "fresh")
    weights = []
    for workers in (0, 1):
        out = tmp_path / f"llava-{workers}"
        config = _config(
            stage="llava",
            model=str(fresh),
            data=str(tiny_data / "conversations.json"),
            output_dir=str(out),
            max_steps=2,
            batch_size=4,
            num_workers=workers,
        )
        assert train(config).steps == 2
        weights.append((out / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_vistog_stage1_smoke_from_committed_llava(tiny_data, tmp_path):
    from vistog_bench.model.loading import load_checkpoint

    out = tmp_path / "vistog"
    config = _config(
        stage="vistog-stage1",
        model=str(demo.checkpoint_dir("tiny-llava")),
        num_semantic_tokens=8,
        data=str(tiny_data / "conversations.json"),
        output_dir=str(out),
        max_steps=2,
        batch_size=10,
        lr=3e-3,
    )
    assert train(config).steps == 2
    first, last = _losses(out)
    assert last < first
    model, _ = load_checkpoint(out)
    assert model.num_visual_tokens == 8


def test_region_pretraining_targets():
    regions = patch_regions(patch_grid=8, region_grid=3)
    assert regions.shape == (64,)
    assert regions[0] == 0 and regions[7] == 2 and regions[63] == 8 and regions[3 * 8 + 4] == 4
    scene = world.image_sample("train", 3).scene
    labels = world.region_labels(scene)
    assert labels["cell"] == list(world.POSITIONS)  # every region names itself, occupied or not
    for cell in range(9):
        occupant = [s for s in scene.shapes if s.cell == cell]
        assert labels["colour"][cell] == (occupant[0].colour if occupant else "none")


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_unknown_demo_task():
    with pytest.raises(UsageError, match="unknown demo task 'shapes_ocr'; available: shapes, shapes_vqa"):
        demo.check_tasks(["shapes_vqa", "shapes_ocr"])
    assert demo.check_tasks("shapes") == demo.DEMO_TASKS


def test_budget_without_checkpoint_lists_the_available_ones():
    with pytest.raises(UsageError, match=r"no tiny VisToG model for budget 7; available budgets: 64, 16, 4"):
        demo.checkpoint_for_budget(7)


def test_corrupted_weights_give_one_clear_line(tmp_path):
    from vistog_bench.model.loading import load_checkpoint

    copy = tmp_path / "tiny-llava"
    shutil.copytree(demo.checkpoint_dir("tiny-llava"), copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UsageError, match="corrupted weights file") as info:
        demo.check_weights(copy)
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError) as info:
        load_checkpoint(copy)
    assert "\n" not in str(info.value)


def test_trainer_bad_input(tiny_data, tmp_path, capsys):
    assert run_cli([]) == 2
    assert "missing --stage, --model, --data, --output-dir" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--num-semantic-tokens N"):
        train(
            _config(
                stage="vistog-stage1",
                model=str(demo.checkpoint_dir("tiny-llava")),
                data=str(tiny_data / "conversations.json"),
                output_dir=str(tmp_path),
            )
        )
    with pytest.raises(UsageError, match="training data not found"):
        train(
            _config(
                stage="llava",
                model=str(demo.checkpoint_dir("tiny-llava")),
                data=str(tmp_path / "none.json"),
                output_dir=str(tmp_path),
            )
        )
    with pytest.raises(UsageError, match="--batch-size must be >= 1, got 0"):
        _config(stage="llava", model="m", data="d", output_dir="o", batch_size=0)


# -- the lmms-eval tasks -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_tasks(tmp_path_factory):
    import os

    from lmms_eval.tasks import TaskManager, get_task_dict

    previous = os.environ.get("VISTOG_BENCH_CACHE")
    os.environ["VISTOG_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        manager = TaskManager(include_path=str(PROJECT_TASKS), include_defaults=False)
        (group,) = get_task_dict([demo.DEMO_GROUP], manager).values()
        yield dict(group)
    finally:
        if previous is None:
            os.environ.pop("VISTOG_BENCH_CACHE")
        else:
            os.environ["VISTOG_BENCH_CACHE"] = previous


def test_tasks_load_and_score(shapes_tasks):
    assert set(shapes_tasks) == set(demo.DEMO_TASKS)
    vqa = shapes_tasks["shapes_vqa"]
    docs = vqa.test_docs()
    assert len(docs) >= 500
    doc = docs[0]
    assert vqa.doc_to_text(doc) == doc["question"] and len(vqa.doc_to_visual(doc)) == 1
    right = vqa.process_results(doc, [doc["answer"] + "."])
    wrong = vqa.process_results(doc, ["nothing"])
    assert right["exact_match"] == 1.0 and wrong["exact_match"] == 0.0
    aggregate = vqa.aggregation()[f"{doc['question_type']}_exact_match"]
    assert (
        aggregate([right[f"{doc['question_type']}_exact_match"], wrong[f"{doc['question_type']}_exact_match"]]) == 0.5
    )

    video = shapes_tasks["shapes_video"]
    clip = video.test_docs()[0]
    assert len(video.doc_to_visual(clip)) == world.VIDEO_FRAMES

    caption = shapes_tasks["shapes_caption"]
    docs = caption.test_docs()
    results = [caption.process_results(d, [d["answer"][0]])["shapes_CIDEr"] for d in (docs[i] for i in range(5))]
    assert caption.aggregation()["shapes_Bleu_4"](results) > 0.99
