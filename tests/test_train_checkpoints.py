"""Resumable training states lose nothing and run nothing: a planted pickle is refused and never executed, a kill
during a save leaves the last complete checkpoint (and `latest` finds it), a full disk during a save is one line with
the last checkpoint intact, damaged or foreign folders are refused in one line; training on nothing (no image found,
no answer token left, a NaN loss) stops before a model is written; wrong-typed data, unknown or unusable trackers and
`--plan --gpus 0` are one line, exit 2."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_loop import write_single_word_data

from vistog_bench.cli import main as vistog_bench
from vistog_bench.demo.build import write_fresh_model
from vistog_bench.train import TrainConfig, train
from vistog_bench.train.checkpoints import TORN, latest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return write_fresh_model(root / "fresh"), write_single_word_data(root / "data")


SETTINGS = dict(stage="llava", batch_size=2, lr=3e-3, warmup_ratio=0.25, log_every=1, seed=0, threads=1)


def flags(setup, output, *extra) -> list[str]:
    """`vistog-bench train` flags of `config(setup, output)`, then `extra`."""
    fresh, data = setup
    given = {**SETTINGS, "model": fresh, "data": data, "output_dir": output}
    return [
        *(f for key, value in given.items() for f in ("--" + key.replace("_", "-"), str(value))),
        "--quiet",
        "--no-progress",
        *extra,
    ]


def config(setup, output, **values) -> TrainConfig:
    fresh, data = setup
    given = {**SETTINGS, "model": str(fresh), "data": str(data), "output_dir": str(output)}
    return TrainConfig(**given, quiet=True, progress=False, **values)


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory) -> Path:
    """checkpoint_0 (step 1) and checkpoint_1 (step 2) of a 3-step run."""
    output = tmp_path_factory.mktemp("saved") / "run"
    train(config(setup, output, max_steps=3, save_steps=1))
    return output / "checkpoints"


def refused(capsys, argv: list[str], code: int = 2) -> str:
    """Runs `vistog-bench train ARGV` in this process; asserts the exit code and one error line, returns it."""
    assert vistog_bench(["train", *argv]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class Planted:
    """Unpickled, it writes `marker`: what a checkpoint from an untrusted source can do to a weights_only=False load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code from the checkpoint ran")


def plant(path: Path, marker: Path) -> None:
    torch.save(Planted(marker), path)  # what accelerate's save_custom_state writes: torch.save of a pickle
    torch.load(path, weights_only=False)  # the pickle is live: loaded as accelerate's load_custom_state does
    assert marker.is_file()
    marker.unlink()


def accelerate_checkpoint(folder: Path) -> Path:
    """A real `Accelerator.save_state` folder (accelerate's format: optimizer.bin, scheduler.bin, random_states_0.pkl,
    custom_checkpoint_0.pkl, ...) of a small module with a registered state."""
    from accelerate import Accelerator

    from vistog_bench.train.loop import TrainerState

    accelerator = Accelerator()
    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    accelerator.prepare(module, optimizer, scheduler)
    accelerator.register_for_checkpointing(TrainerState())
    accelerator.save_state(folder)
    return folder


@pytest.mark.parametrize("layout", ["ours", "accelerate"])
def test_a_planted_pickle_is_refused_and_never_run(setup, saved, tmp_path, capsys, layout):
    """The issue's case: a checkpoint folder carrying custom_checkpoint_0.pkl whose unpickling writes a marker file.
    Resuming from it is one line, exit 2, and the marker never appears (nothing in the folder was unpickled)."""
    marker = tmp_path / "marker"
    if layout == "ours":  # a complete checkpoint of ours with a pickle put in beside its files
        folder = shutil.copytree(saved / "checkpoint_0", tmp_path / "checkpoint_0")
    else:  # accelerate's own format, as `accelerator.save_state` wrote it
        folder = accelerate_checkpoint(tmp_path / "checkpoint_0")
        assert {"optimizer.bin", "random_states_0.pkl"} <= set(os.listdir(folder))
    plant(folder / "custom_checkpoint_0.pkl", marker)
    output = tmp_path / "out"
    line = refused(capsys, flags(setup, output, "--max-steps", "3", "--resume-from-checkpoint", str(folder)))
    assert "custom_checkpoint_0.pkl" in line and "code" in line
    assert not marker.exists()
    assert not (output / "model.safetensors").exists()


def damage(folder: Path, how: str, fresh: Path) -> Path:
    """One hand-made damage of a copied checkpoint (or a foreign folder); returns the folder to resume from."""
    manifest_path = folder / "checkpoint.json"
    manifest = json.loads(manifest_path.read_text())

    def rewrite(name: str, data: bytes) -> None:  # a file replaced and its manifest entry made to agree
        (folder / name).write_bytes(data)
        manifest["files"][name] = len(data)
        manifest_path.write_text(json.dumps(manifest))

    shared = (folder / "shared.safetensors").read_bytes()
    if how == "safetensors cut":
        (folder / "shared.safetensors").write_bytes(shared[: len(shared) // 2])
    elif how == "safetensors cut, manifest agreeing":
        rewrite("shared.safetensors", shared[: len(shared) // 2])
    elif how == "state json empty":
        rewrite("process_0.json", b"")
    elif how == "state json cut":
        text = (folder / "shared.json").read_bytes()
        rewrite("shared.json", text[: len(text) // 2])
    elif how == "state json of another shape":
        rewrite("shared.json", b"{}")
    elif how == "state json with a wrong type":
        state = json.loads((folder / "shared.json").read_text())
        rewrite("shared.json", json.dumps({**state, "trainer": {**state["trainer"], "step": "1"}}).encode())
    elif how == "manifest cut":
        manifest_path.write_bytes(manifest_path.read_bytes()[:40])
    elif how == "no manifest":
        manifest_path.unlink()
    elif how == "another launch":
        manifest_path.write_text(json.dumps({**manifest, "processes": 2}))
    elif how == "a model folder":
        return fresh
    return folder


DAMAGES = {  # how -> what the one line says
    "safetensors cut": "the checkpoint is damaged",
    "safetensors cut, manifest agreeing": "not a readable safetensors file",
    "state json empty": "not readable JSON",
    "state json cut": "not readable JSON",
    "state json of another shape": "a state this run cannot restore",
    "state json with a wrong type": "the trainer state's 'step' is str, this run's int",
    "manifest cut": "not readable JSON",
    "no manifest": "not a complete checkpoint",
    "another launch": "was written by 2 process(es), sharded=False; this run has 1",
    "a model folder": "is a model folder",
}


@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_or_foreign_folder_is_one_line(setup, saved, tmp_path, capsys, how):
    folder = damage(shutil.copytree(saved / "checkpoint_0", tmp_path / "checkpoint_0"), how, setup[0])
    output = tmp_path / "out"
    line = refused(capsys, flags(setup, output, "--max-steps", "3", "--resume-from-checkpoint", str(folder)))
    assert DAMAGES[how] in line
    assert not (output / "model.safetensors").exists()


def test_numbering_continues_and_rotation_waits_for_a_complete_checkpoint(setup, saved, tmp_path):
    """Resumed from checkpoint_0 while checkpoint_1 exists: the next save is checkpoint_2 (nothing overwritten), a
    torn folder (a higher number included) is not counted and is removed, and --save-total-limit 2 then keeps the
    two newest complete ones."""
    root = shutil.copytree(saved, tmp_path / "out" / "checkpoints")
    (root / f"checkpoint_7{TORN}").mkdir()  # a save killed half-way
    (root / f"checkpoint_7{TORN}" / "shared.safetensors").write_bytes(b"\0" * 10)
    assert latest(tmp_path / "out") == root / "checkpoint_1"
    before = digest(root / "checkpoint_1")
    resumed = config(setup, tmp_path / "out", max_steps=3, save_steps=1, save_total_limit=2)
    result = train(dataclasses.replace(resumed, resume_from_checkpoint=str(root / "checkpoint_0")))
    assert result.steps == 3
    assert sorted(os.listdir(root)) == ["checkpoint_1", "checkpoint_2"]
    assert digest(root / "checkpoint_1") == before
    assert json.loads((root / "checkpoint_2" / "checkpoint.json").read_text())["step"] == 2
    assert latest(tmp_path / "out") == root / "checkpoint_2"


def start_training(setup, output, *extra, preexec_fn=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "vistog_bench.train", *flags(setup, output, *extra)]
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn
    )


def kill_during_a_save(setup, output) -> Path:
    """SIGKILL a real training process while it writes checkpoint_<k> (k >= 1): polls for a torn folder holding a
    first file and kills at once; returns the torn folder, which must still be there (else the save had finished
    first: try again)."""
    for _ in range(3):
        shutil.rmtree(output, ignore_errors=True)
        process = start_training(setup, output, "--max-steps", "400", "--save-steps", "1", "--save-total-limit", "1")
        root, deadline = output / "checkpoints", time.monotonic() + 300
        torn = []
        while not torn and process.poll() is None and time.monotonic() < deadline:
            names = os.listdir(root) if root.is_dir() else []
            torn = [root / n for n in names if n.endswith(TORN) and n != f"checkpoint_0{TORN}"]
            torn = [folder for folder in torn if folder.is_dir() and os.listdir(folder)]
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert torn, "the run ended before a second checkpoint was being written"
        if torn[0].is_dir():
            return torn[0]
    pytest.fail("three kills all landed after the save completed")


@pytest.mark.slow
def test_a_kill_during_a_save_keeps_the_last_complete_checkpoint(setup, tmp_path):
    """The issue's case: killed while checkpoint_k was written, with --save-total-limit 1. The previous checkpoint
    survives (rotation waits for a complete one), `latest` is it and not the torn one, and resuming from it works:
    the torn folder is removed and numbering goes on."""
    output = tmp_path / "out"
    torn = kill_during_a_save(setup, output)
    assert os.listdir(torn) and "checkpoint.json" not in os.listdir(torn)  # cut half-way
    index = int(torn.name.removeprefix("checkpoint_").removesuffix(TORN))
    previous = output / "checkpoints" / f"checkpoint_{index - 1}"
    assert (previous / "checkpoint.json").is_file()
    assert latest(output) == previous
    step = json.loads((previous / "checkpoint.json").read_text())["step"]
    resumed = config(setup, output, max_steps=step + 2, save_steps=1, save_total_limit=1)
    result = train(dataclasses.replace(resumed, resume_from_checkpoint=str(previous)))
    assert result.steps == step + 2 and len(result.losses) == step + 2
    assert os.listdir(output / "checkpoints") == [f"checkpoint_{index}"]  # torn one gone, the next number used
    assert json.loads((output / "checkpoints" / f"checkpoint_{index}" / "checkpoint.json").read_text())["step"] == (
        step + 1
    )


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(setup, saved, tmp_path):
    """A real write limit (RLIMIT_FSIZE: files past 1 MB fail with EFBIG; Python ignores SIGXFSZ) reached while
    checkpoint_2 is written (its model + optimizer file is ~7 MB): one line naming the file, exit 3, checkpoint_0
    and checkpoint_1 unchanged, nothing half-written left (the torn folder removed), no model written."""
    root = shutil.copytree(saved, tmp_path / "out" / "checkpoints")
    before = {name: digest(root / name) for name in os.listdir(root)}
    limit = 1 << 20

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    extra = ["--max-steps", "4", "--save-steps", "1", "--resume-from-checkpoint", "latest"]
    process = start_training(setup, tmp_path / "out", *extra, preexec_fn=limit_file_size)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 3, err[-2000:]  # the CLI's exit code for a full disk / file-size limit
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert f"checkpoint_2{TORN}/shared.safetensors" in lines[0]
    assert {name: digest(root / name) for name in os.listdir(root)} == before
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # the trained model's own save under the same limit: one line naming the output folder, no torn weights file
    process = start_training(setup, tmp_path / "final", "--max-steps", "1", preexec_fn=limit_file_size)
    _, err = process.communicate(timeout=600)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert process.returncode == 3 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert str(tmp_path / "final") in lines[0] and not (tmp_path / "final" / "model.safetensors").exists()


def test_training_on_nothing_is_refused_before_the_first_step(setup, tmp_path, capsys):
    """An --image-folder holding none of the images, a --max-length that leaves no answer token, a dataset whose
    every sample is filtered out (no image readable): one line before any step; nothing is written."""
    fresh, data = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(capsys, flags(setup, tmp_path / "a", "--max-steps", "2", "--image-folder", str(empty)))
    assert "--image-folder" in line and "holds none of the 6 images" in line

    # the position of the first answer token, found by tokenising a sample as the trainer does: every sample asks
    # the same question, so a --max-length of that position leaves each without an answer token
    from vistog_bench.model.loading import load_processor
    from vistog_bench.model.prompting import PromptBuilder, find_template
    from vistog_bench.train.data import ConversationDataset, load_records

    processor = load_processor(fresh)
    prompts = PromptBuilder(find_template(processor, fresh), processor.tokenizer)
    dataset = ConversationDataset(load_records(data, "llava"), data.parent, processor, prompts, 64, 4096)
    _, labels = dataset.encode(dataset.records[0])
    first_answer = next(i for i, label in enumerate(labels) if label != -100)
    line = refused(capsys, flags(setup, tmp_path / "b", "--max-steps", "2", "--max-length", str(first_answer)))
    assert "nothing to train on: all 6 samples skipped" in line and f"--max-length {first_answer}" in line

    unreadable = tmp_path / "unreadable"  # every image there, none an image: each sample is filtered out
    for name in (record["image"] for record in json.loads(data.read_text())):
        (unreadable / name).parent.mkdir(parents=True, exist_ok=True)
        (unreadable / name).write_bytes(b"not a PNG")
    line = refused(capsys, flags(setup, tmp_path / "c", "--max-steps", "2", "--image-folder", str(unreadable)))
    assert "nothing to train on: all 6 samples skipped; 6 x unreadable image" in line
    assert not any((tmp_path / name / "model.safetensors").exists() for name in "abc")


def test_a_nan_loss_stops_the_run_and_writes_no_model(setup, tmp_path, capsys):
    """A starting checkpoint with one NaN weight: the first loss is NaN; the run stops there (exit 1: the work ran
    and found a problem), one line, no model written."""
    from transformers import LlavaForConditionalGeneration

    from vistog_bench.model.loading import load_processor

    fresh = setup[0]
    model = LlavaForConditionalGeneration(LlavaForConditionalGeneration.config_class.from_pretrained(fresh))
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    load_processor(fresh).save_pretrained(tmp_path / "nan")
    argv = flags(setup, tmp_path / "out", "--max-steps", "2")
    argv[argv.index("--model") + 1] = str(tmp_path / "nan")
    line = refused(capsys, argv, code=1)
    assert "step 1: the loss is not finite (nan" in line
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_wrong_inputs_are_one_line(setup, tmp_path, capsys):
    """A conversation value of the wrong type, an unknown tracker, a tracker not installed, `--plan --gpus 0`: one
    line, exit 2."""
    fresh, data = setup
    records = json.loads(data.read_text())
    records[4]["conversations"][1]["value"] = 7
    (data.parent / "typed.json").write_text(json.dumps(records))
    argv = flags(setup, tmp_path / "a", "--max-steps", "1", "--image-folder", str(data.parent))
    argv[argv.index("--data") + 1] = str(data.parent / "typed.json")
    assert "sample 4: conversations[1]['value'] must be a string, got int" in refused(capsys, argv)
    line = refused(capsys, flags(setup, tmp_path / "b", "--max-steps", "1", "--report-to", "bogus"))
    assert "--report-to bogus: not one of accelerate's trackers" in line
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    absent = [t.value for t in LoggerType if t != LoggerType.ALL and t not in get_available_trackers()]
    assert absent  # aim, clearml, ...: some tracker package is always missing from the test environment
    line = refused(capsys, flags(setup, tmp_path / "b", "--max-steps", "1", "--report-to", absent[0]))
    assert f"--report-to {absent[0]}: its package is not installed" in line  # accelerate would drop it silently
    assert "--gpus must be >= 1" in refused(capsys, ["--recipe", "vistog-7b-stage2", "--plan", "--gpus", "0"])


@pytest.mark.slow
def test_wandb_with_a_bad_key_is_one_line_without_the_key(setup, tmp_path):
    pytest.importorskip("wandb")
    key = "not-a-key-7f3c9e"
    env = {**ENV, "WANDB_API_KEY": key, "WANDB_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "vistog_bench.train", *flags(setup, tmp_path / "out", "--report-to", "wandb")]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--report-to wandb" in lines[0] and "Traceback" not in result.stderr
    assert key not in result.stdout + result.stderr


@pytest.mark.slow
def test_ddp_two_processes_resume_as_if_uninterrupted(tmp_path):
    """DDP over gloo (`torchrun --nproc_per_node 2`): the main process writes the model and optimizer once, each
    process its RNG states; resumed from step 2, the run ends with the uninterrupted one's loss lines and weights."""
    from safetensors.torch import load_file
    from test_train_distributed import TORCHRUN, free_port, losses_and_rates, run, train_args

    fresh, data = write_fresh_model(tmp_path / "fresh"), write_single_word_data(tmp_path / "data", 12)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch = [*TORCHRUN, "--master_port", str(free_port())]
    result = run([*launch, *train_args(fresh, data, straight, 2), "--save-steps", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    state = straight / "checkpoints" / "checkpoint_0"
    manifest = json.loads((state / "checkpoint.json").read_text())
    assert (manifest["processes"], manifest["sharded"], manifest["step"]) == (2, False, 2)
    assert {"shared.safetensors", "process_0.safetensors", "process_1.safetensors"} <= set(manifest["files"])
    shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
    resume = [*train_args(fresh, data, resumed, 2), "--save-steps", "2", "--resume-from-checkpoint", "latest"]
    result = run([*launch, *resume])
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses_and_rates(resumed) == losses_and_rates(straight) and len(losses_and_rates(straight)) == 3
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
