"""The runner's pre-flight, `run.tasks.check_tasks_available`: before any model loads, every task behind the names
(groups and tags expanded) must be able to get its data here. Offline (HF_HUB_OFFLINE), a built-in task needs its hub
dataset in the datasets cache lmms-eval loads from: a missing one is one line naming the hub dataset and the local
route, exit 2. The caches are built by `datasets` itself and read back with `datasets.load_dataset`, offline.
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from vistog_bench.errors import UsageError
from vistog_bench.run.tasks import check_tasks_available, expand_tasks, task_manager

USER_TASKS = """\
    task: {name}
    dataset_path: {path}
    {name_line}
    dataset_kwargs:
      token: True
      {files_line}
    test_split: test
    output_type: generate_until
    doc_to_text: question
    doc_to_target: answer
    metric_list:
      - metric: exact_match
        aggregation: mean
        higher_is_better: true
"""


def _user_task(folder: Path, name: str, path: str, dataset_name: str = "", data_file: str = "") -> None:
    text = USER_TASKS.format(
        name=name,
        path=path,
        name_line=f"dataset_name: {dataset_name}" if dataset_name else "",
        files_line=f"data_files: {{test: {data_file}}}" if data_file else "",
    )
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text))


def cache_hub_dataset(repo: str, config: str, split: str, frame: pd.DataFrame, cache_dir: Path) -> Path:
    """Put `repo`'s `config` into a datasets cache the way a connected `load_dataset(repo, config)` leaves it:
    datasets' parquet builder with a named config prepares it, into `<cache>/<org>___<name>/<config>/<version>/<hash>`.
    """
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

    org, name = repo.split("/")
    staging = cache_dir / "_staging"
    source = staging / f"{config}-{split}.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(source)
    files = DataFilesDict.from_local_or_remote({split: [str(source)]}, base_path=str(staging))
    builder_class = type("HubCopy", (Parquet,), {"BUILDER_CONFIGS": [ParquetConfig(name=config, data_files=files)]})
    builder = builder_class(cache_dir=str(staging), config_name=config, dataset_name=name, hash="0" * 40)
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    relative = built.relative_to(staging)  # <name>/<config>/<version>/<hash>; the hub copy's folder has the org too
    target = cache_dir / f"{org}___{relative.parts[0]}" / Path(*relative.parts[1:])
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(target))
    shutil.rmtree(staging)
    return target


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_tasks")
    _user_task(folder, "tiny_hub_vqa", "vistog-test/TinyVQA", dataset_name="main")
    _user_task(folder, "tiny_file_vqa", "parquet", data_file=str(folder / "tiny.parquet"))
    (folder / "tiny_group.yaml").write_text("group: tiny_group\ntask:\n  - tiny_hub_vqa\n  - shapes_vqa\n")
    return folder


@pytest.fixture(scope="module")
def manager(user_tasks):
    return task_manager([str(user_tasks)])  # the runner's: lmms-eval's built-ins, ours, the user's folder


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE as `datasets` and `huggingface_hub` read it, with empty caches: lmms-eval's datasets cache
    (LMMS_EVAL_DATASETS_CACHE), $HF_HOME (video folders) and datasets' own default (gqa's image table)."""
    import datasets
    import huggingface_hub.constants
    from lmms_eval.api.task import _resolve_hf_datasets_cache_dir

    # lmms-eval resolves its cache folder once per process (lru_cache); each test here has its own
    _resolve_hf_datasets_cache_dir.cache_clear()
    yield from _offline(tmp_path, monkeypatch, datasets, huggingface_hub.constants)
    _resolve_hf_datasets_cache_dir.cache_clear()


def _offline(tmp_path, monkeypatch, datasets, hub_constants):

    caches = {
        "lmms": tmp_path / "lmms_cache",
        "hf_home": tmp_path / "hf_home",
        "default": tmp_path / "hf_home/datasets",
    }
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", caches["default"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(caches["lmms"]))
    monkeypatch.setenv("HF_HOME", str(caches["hf_home"]))
    yield caches


def _error(manager, names, data_dir=None) -> str:
    with pytest.raises(UsageError) as err:
        check_tasks_available(manager, names, data_dir)
    return str(err.value)


def test_gqa_offline_without_its_dataset_names_the_hub_dataset_and_the_local_route(manager, offline):
    message = _error(manager, ["gqa"])
    assert "\n" not in message
    assert message.startswith("gqa needs the hub dataset lmms-lab-encoder/GQA (config testdev_balanced_instructions)")
    assert str(offline["lmms"]) in message  # the cache lmms-eval would load from
    assert "use --tasks gqa_local --data-dir DIR instead, DIR holding a copy of lmms-lab/GQA" in message
    assert "docs/offline-data.md" in message


def test_gqa_needs_both_of_its_tables_in_the_cache_and_then_passes(manager, offline):
    import datasets

    questions = pd.DataFrame({"imageId": ["n1"], "question": ["what colour is it?"], "answer": ["red"]})
    cache_hub_dataset("lmms-lab-encoder/GQA", "testdev_balanced_instructions", "testdev", questions, offline["lmms"])
    loaded = datasets.load_dataset(
        "lmms-lab-encoder/GQA", "testdev_balanced_instructions", cache_dir=str(offline["lmms"])
    )
    assert loaded["testdev"][0]["imageId"] == "n1"  # the cache is real: datasets itself loads it, offline

    # gqa's process_docs loads the image table on its own, from datasets' default cache
    message = _error(manager, ["gqa"])
    assert "lmms-lab-encoder/GQA (config testdev_balanced_images)" in message
    assert str(offline["default"]) in message

    images = pd.DataFrame({"id": ["n1"], "image": [b"not decoded here"]})
    cache_hub_dataset("lmms-lab-encoder/GQA", "testdev_balanced_images", "testdev", images, offline["default"])
    check_tasks_available(manager, ["gqa"], None)


def test_a_group_names_its_local_twin_and_counts_the_rest(manager, offline):
    message = _error(manager, ["vistog_image"])
    assert message.startswith("gqa needs the hub dataset lmms-lab-encoder/GQA")
    assert "use --tasks vistog_image_local --data-dir DIR instead (gqa_local reads DIR/lmms-lab/GQA)" in message
    assert message.endswith("(and 6 more)")  # mmbench_en_dev, mme, pope, scienceqa_img, vqav2_val, textvqa_val

    video = _error(manager, ["videomme"])
    assert video.startswith(f"videomme needs its videos in {offline['hf_home'] / 'videomme'}")
    assert "lmms-eval/Video-MME" in video and "--tasks videomme_local --data-dir DIR" in video


def test_user_hub_task_and_group_pass_once_cached(manager, offline, user_tasks):
    assert expand_tasks(manager, ["tiny_group"])[0] == ["tiny_hub_vqa", "shapes_vqa"]
    message = _error(manager, ["tiny_group"])
    assert message.startswith("tiny_hub_vqa needs the hub dataset vistog-test/TinyVQA (config main)")
    assert "with the hub reachable" in message  # no local twin to offer
    cache_hub_dataset("vistog-test/TinyVQA", "other", "test", pd.DataFrame({"question": ["q"]}), offline["lmms"])
    assert "(config main)" in _error(manager, ["tiny_hub_vqa"])  # another config of it does not count
    cache_hub_dataset(
        "vistog-test/TinyVQA", "main", "test", pd.DataFrame({"question": ["q"], "answer": ["a"]}), offline["lmms"]
    )
    check_tasks_available(manager, ["tiny_group", "shapes"], None)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ("  - no_such_task\n", "group g: member 'no_such_task' is not a known task"),
        ("  - g\n", "group g contains itself (g > g)"),
        ("  - task: t\n    dataset_path: x\n", "group g: an inline task config among its members is not supported"),
        ("  []\n", "--tasks g: a group with no task in it"),
    ],
)
def test_the_pre_flight_and_the_sweep_walk_a_group_by_the_same_rules(tmp_path, members, message):
    from lmms_eval.tasks import TaskManager

    (tmp_path / "g.yaml").write_text("group: g\ntask:\n" + members)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False, verbosity="WARNING")
    for walk in (lambda: check_tasks_available(manager, ["g"], None), lambda: expand_tasks(manager, ["g"])):
        with pytest.raises(UsageError) as refused:
            walk()
        assert str(refused.value).startswith(message), refused.value


@pytest.fixture
def local_hub(monkeypatch):
    """A stand-in hub endpoint on the loopback address that answers every request 200 (only its reachability is
    asked), and `_hub_unreachable`'s memo cleared around the test."""
    import http.server
    import threading

    from huggingface_hub import constants

    from vistog_bench.run.tasks import _hub_unreachable

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the handler's API
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    _hub_unreachable.cache_clear()
    yield server
    server.shutdown()
    _hub_unreachable.cache_clear()


def test_online_with_the_hub_reachable_datasets_download_and_local_files_are_checked(
    manager, user_tasks, local_hub, monkeypatch
):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # an online process (CI sets HF_HUB_OFFLINE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_tasks_available(manager, ["gqa", "tiny_hub_vqa"], None)  # datasets would download them: nothing to say

    message = _error(manager, ["tiny_file_vqa"])
    assert message == f"tiny_file_vqa reads {user_tasks / 'tiny.parquet'}, which does not exist"
    pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_parquet(user_tasks / "tiny.parquet")
    check_tasks_available(manager, ["tiny_file_vqa"], None)


def test_online_with_the_hub_unreachable_only_the_cache_counts(manager, local_hub, monkeypatch):
    import datasets
    from huggingface_hub import constants

    from vistog_bench.run.tasks import _hub_unreachable

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # an online process (CI sets HF_HUB_OFFLINE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    port = local_hub.server_port
    local_hub.shutdown()
    local_hub.server_close()  # nothing listens on the port now: the connection is refused at once
    _hub_unreachable.cache_clear()
    message = _error(manager, ["gqa"])
    assert f"the hub http://127.0.0.1:{port} cannot be reached" in message and "--tasks gqa_local" in message
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == (False, False)  # restored after the lookup


def test_unknown_names_and_local_tasks_without_a_mirror_are_refused(manager, offline, tmp_path):
    assert _error(manager, ["gqa_locl"]).startswith("unknown task 'gqa_locl' (did you mean gqa_local")
    message = _error(manager, ["pope_local", "mme_local"], tmp_path)
    assert message.startswith(f"pope_local needs {tmp_path / 'lmms-lab/POPE/data/test-*.parquet'}")
    assert message.endswith("(and 1 more)")


# -- through the CLI: refused before the model loads ---------------------------------------------------------------
@pytest.fixture(scope="module")
def corrupt_checkpoint(tmp_path_factory):
    """A tiny LLaVA whose weights file is garbage: loading it would fail, so an answer about the data proves that the
    run was refused before any weights were read."""
    from testers import save_tiny_llava

    path = save_tiny_llava(tmp_path_factory.mktemp("ckpt") / "tiny-llava")
    weights = list(path.glob("*.safetensors"))
    assert weights
    for file in weights:
        file.write_bytes(b"\x00not a safetensors file")
    return path


def _cli_env(tmp_path) -> dict:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LMMS_EVAL_DATASETS_CACHE", "HF_DATASETS_CACHE", "VISTOG_DATA_DIR", "HF_HUB_CACHE")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "empty_hf_home"),
        OMP_NUM_THREADS="1",
        VISTOG_BENCH_CACHE=str(tmp_path / "cache"),
    )
    return env


def _cli_run(tmp_path, *args):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vistog_bench.cli",
            "run",
            *args,
            "--output",
            str(tmp_path / "results"),
            "--no-report",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        env=_cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("vistog-bench run: error:")]
    return out, errors


def test_cli_refuses_gqa_offline_before_loading_the_model(corrupt_checkpoint, tmp_path):
    out, errors = _cli_run(tmp_path, "--model", str(corrupt_checkpoint), "--tasks", "gqa")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert len(errors) == 1, out.stderr[-2000:]
    assert "lmms-lab-encoder/GQA" in errors[0] and "lmms-lab/GQA" in errors[0]
    assert "--tasks gqa_local --data-dir DIR" in errors[0]
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir())  # no run folder: refused before the sweep started


def test_cli_names_the_file_and_column_of_a_bad_mirror(corrupt_checkpoint, tmp_path):
    mirror = tmp_path / "mirror"
    table = mirror / "lmms-lab/POPE/data/test-00000-of-00001.parquet"
    table.parent.mkdir(parents=True)
    pd.DataFrame(
        {"image": [b"png"], "question": ["Is there a cat?"], "question_id": ["1"], "answer": ["yes"]}
    ).to_parquet(table)  # fmt: skip  (no `category`)
    out, errors = _cli_run(
        tmp_path, "--model", str(corrupt_checkpoint), "--tasks", "pope_local", "--data-dir", str(mirror)
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert f"pope_local: {table} has no column 'category'" in errors[0]
