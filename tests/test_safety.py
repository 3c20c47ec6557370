"""Safe by default: a checkpoint's own code never runs, whatever is typed at a prompt, and broken weights are one
line. Real folders on disk, the real CLI in a subprocess with `y` piped to its stdin."""

import json
import os
import subprocess
import sys

import pytest
from testers import save_tiny_llava

from vistog_bench.demo import checkpoint_for_budget
from vistog_bench.errors import UsageError
from vistog_bench.model.loading import CONFIG_FILES, load_checkpoint, load_config, load_processor, refuse_remote_code

# file -> what it adds: a class transformers does not have and the `auto_map` that makes transformers import it from
# `evil.py` in the folder (transformers prompts "run the custom code? [y/N]" only when it has no class of its own)
AUTO_MAPS = {
    "config.json": {"model_type": "evil_llava", "auto_map": {"AutoConfig": "evil.EvilConfig"}},
    "tokenizer_config.json": {
        "tokenizer_class": "EvilTokenizer",
        "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]},
    },
    "preprocessor_config.json": {
        "image_processor_type": "EvilImageProcessor",
        "auto_map": {"AutoImageProcessor": "evil.EvilImageProcessor"},
    },
    "processor_config.json": {"processor_class": "EvilProcessor", "auto_map": {"AutoProcessor": "evil.EvilProcessor"}},
    "video_preprocessor_config.json": {
        "video_processor_type": "EvilVideoProcessor",
        "auto_map": {"AutoVideoProcessor": "evil.EvilVideoProcessor"},
    },
}


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("stock") / "llava")


def _copy(src, dst):
    dst.mkdir(parents=True)
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def remote_code_checkpoint(stock, folder, file: str, marker):
    """A working tiny checkpoint whose `file` asks for `evil.py`, a module that writes `marker` when imported."""
    ckpt = _copy(stock, folder)
    (ckpt / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the checkpoint ran its own code')\n"
        "from transformers import LlavaConfig, LlavaProcessor, CLIPImageProcessor, PreTrainedTokenizerFast\n"
        "class EvilConfig(LlavaConfig):\n    model_type = 'evil_llava'\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "class EvilProcessor(LlavaProcessor):\n    pass\n"
        "class EvilImageProcessor(CLIPImageProcessor):\n    pass\n"
        "EvilVideoProcessor = EvilImageProcessor\n"
    )
    path = ckpt / file
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(AUTO_MAPS[file])
    path.write_text(json.dumps(data))
    return ckpt


def cli(args, cwd):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(cwd / "hf"),
        "HF_MODULES_CACHE": str(cwd / "modules"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [sys.executable, "-m", "vistog_bench.cli", *args],
        input="y\n",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def assert_refused(result, command: str, file: str):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"vistog-bench {command}: error:"), lines
    assert file in lines[0] and "custom code" not in result.stdout + result.stderr  # never transformers' prompt


# Each of these ran evil.py when `y` was piped in (run through AutoProcessor, profile and --analytic through
# AutoConfig before the model-type check); `run` even finished with exit 0.
@pytest.mark.parametrize(
    "file,args",
    [
        ("processor_config.json", ["run", "--tasks", "shapes_vqa", "--limit", "1", "--output", "results", "--model"]),
        (
            "config.json",
            ["profile", "--budgets", "576", "--batch-sizes", "1", "--new-tokens", "1", "--repeats", "1", "--model"],
        ),
        ("config.json", ["profile", "--analytic", "--budgets", "576", "--model"]),
    ],
    ids=["run", "profile", "profile-analytic"],
)
def test_cli_refuses_a_checkpoint_with_auto_map_and_never_runs_its_code(stock, tmp_path, file, args):
    marker = tmp_path / "MARKER"
    ckpt = remote_code_checkpoint(stock, tmp_path / "ckpt", file, marker)
    result = cli([*args, str(ckpt)], tmp_path)
    assert_refused(result, args[0], str(ckpt / file))
    assert not marker.exists()


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_run_refuses_remote_code_in_other_files(stock, tmp_path, file):
    marker = tmp_path / "MARKER"
    ckpt = remote_code_checkpoint(stock, tmp_path / "ckpt", file, marker)
    result = cli(
        ["run", "--model", str(ckpt), "--tasks", "shapes_vqa", "--limit", "1", "--output", "results"], tmp_path
    )
    assert_refused(result, "run", str(ckpt / file))
    assert not marker.exists()


@pytest.mark.parametrize("file", CONFIG_FILES)
def test_every_reader_refuses_auto_map_in_any_config_file(stock, tmp_path, file):
    marker = tmp_path / "MARKER"
    ckpt = remote_code_checkpoint(stock, tmp_path / "ckpt", file, marker)
    for reader in (refuse_remote_code, load_config, load_processor, load_checkpoint):
        with pytest.raises(UsageError, match=f"{file}.*auto_map"):
            reader(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize(
    "file,key,value",
    [
        ("config.json", "architectures", ["EvilForConditionalGeneration"]),
        ("tokenizer_config.json", "tokenizer_class", "EvilTokenizer"),
        ("tokenizer_config.json", "processor_class", "EvilProcessor"),
        ("preprocessor_config.json", "image_processor_type", "EvilImageProcessor"),
        ("video_preprocessor_config.json", "video_processor_type", "EvilVideoProcessor"),
    ],
)
def test_a_class_transformers_does_not_have_is_refused(stock, tmp_path, file, key, value):
    ckpt = _copy(stock, tmp_path / "ckpt")
    path = ckpt / file
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=f"{file} names {key} .*not a transformers class"):
        refuse_remote_code(ckpt)


def test_stock_vistog_and_embedded_checkpoints_pass_the_check(stock, tmp_path):
    refuse_remote_code(stock)
    for budget in (None, 16):
        refuse_remote_code(checkpoint_for_budget(budget))  # VisToG's own classes are ours, not remote code
    model, processor = load_checkpoint(checkpoint_for_budget(16))
    assert model.config.num_semantic_tokens == 16 and processor.tokenizer is not None


def test_invalid_json_in_a_processor_file_is_one_line(stock, tmp_path):
    ckpt = _copy(stock, tmp_path / "ckpt")
    (ckpt / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(UsageError, match="tokenizer_config.json is not valid JSON"):
        load_processor(ckpt)


def test_profile_on_corrupt_safetensors_is_one_line(stock, tmp_path):
    ckpt = _copy(stock, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated: header promises more than the file holds
    result = cli(
        [
            "profile",
            "--model",
            str(ckpt),
            "--budgets",
            "576",
            "--batch-sizes",
            "1",
            "--new-tokens",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
        ],
        tmp_path,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("vistog-bench profile: error: cannot load weights from"), lines
    assert str(ckpt) in lines[0]
