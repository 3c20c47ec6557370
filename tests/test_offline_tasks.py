"""The `*_local` lmms-eval tasks over the drawn fixture mirror: they load through lmms-eval's own TaskManager, give the
built-in tasks' prompts and settings, and score a right answer as right; check_local_data names what is missing."""

import json
import os
import shutil
import string
from pathlib import Path
from types import SimpleNamespace

import pytest

from vistog_bench.run import offline_data
from vistog_bench.run.offline_data import (
    LOCAL_GROUPS,
    LOCAL_TASKS,
    MissingLocalData,
    check_local_data,
)
from vistog_bench.run.tasks import PROJECT_TASKS as TASKS_DIR  # tasks/, shipped in the package
from vistog_bench.testing.fixtures import write_fixture

# The built-in YAML each local task mirrors, relative to lmms_eval/tasks/.
BUILTIN_YAML = {
    "gqa_local": "gqa/gqa.yaml",
    "textvqa_val_local": "textvqa/textvqa_val.yaml",
    "vqav2_val_local": "vqav2/vqav2_val.yaml",
    "pope_local": "pope/pope.yaml",
    "mme_local": "mme/mme.yaml",
    "scienceqa_img_local": "scienceqa/scienceqa_img.yaml",
    "mmbench_en_dev_local": "mmbench/mmbench_en_dev.yaml",
    "mmbench_en_dev_static_local": "mmbench/mmbench_en_dev_static.yaml",
    "coco2017_cap_val_local": "coco_cap/coco2017_cap_val.yaml",
    "nocaps_val_local": "nocaps/nocaps_val.yaml",
    "flickr30k_test_local": "flickr30k/flickr30k_test.yaml",
    "videomme_local": "videomme/videomme.yaml",
    "nextqa_mc_test_local": "nextqa/nextqa_mc_test.yaml",
    **{f"mvbench_{s}_local": f"mvbench/mvbench_{s}.yaml" for s in offline_data.MVBENCH_SUBTASKS},
}

# One task of each kind is loaded end to end; MVBench's 20 subtasks share one template, so one stands for all.
LOADED = [t for t in BUILTIN_YAML if not t.startswith("mvbench_")] + ["mvbench_action_antonym_local"]
VIDEO = {"videomme_local", "nextqa_mc_test_local", "mvbench_action_antonym_local"}


def right_answer(task: str, doc: dict) -> str:
    if task in ("textvqa_val_local",):
        return doc["answers"][0]
    if task == "vqav2_val_local":
        return doc["answers"][0]["answer"]
    if task == "scienceqa_img_local":
        return string.ascii_uppercase[doc["answer"]]
    if task == "nextqa_mc_test_local":
        return string.ascii_uppercase[doc["answer"]]
    if task.startswith("mvbench_"):
        return string.ascii_uppercase[doc["candidates"].index(doc["answer"])]
    if task == "coco2017_cap_val_local":
        return doc["answer"][0]
    if task == "nocaps_val_local":
        return doc["annotations_captions"][0]
    if task == "flickr30k_test_local":
        return doc["caption"][0]
    return doc["answer"]


def wrong_answer(task: str, doc: dict) -> str:
    """A wrong answer the task parses: another option letter for multiple choice (an unparsable reply makes some
    lmms-eval tasks, nextqa_mc among them, pick an option at random), a foreign word otherwise."""
    right = right_answer(task, doc)
    if len(right) == 1 and right in string.ascii_uppercase:
        return "A" if right != "A" else "B"
    return "zebra"


def score(task: str, result: dict) -> float:
    """The 0..1 correctness of one process_results output, read the way each built-in aggregation reads it."""
    if "exact_match" in result:
        return float(result["exact_match"])
    for key in (
        "pope_accuracy",
        "mme_perception_score",
        "mme_cognition_score",
        "videomme_perception_score",
        "mvbench_accuracy",
    ):
        if key in result:
            return float(result[key]["score"])
    raise AssertionError(f"{task}: no score in {sorted(result)}")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = write_fixture(tmp_path_factory.mktemp("mirror"), rows=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(offline_data.DATA_DIR_ENV, str(root))
        mp.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets_cache")))
        # lmms-eval's nextqa utils (imported to compare prompts) read $HF_HOME at import; keep it off the real cache
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        yield root


@pytest.fixture(scope="module")
def manager(mirror):
    from lmms_eval.tasks import TaskManager

    # Built-ins are not needed to load local tasks; indexing only ours keeps this fast.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, verbosity="WARNING")


@pytest.fixture(scope="module")
def loaded(manager):
    from lmms_eval.tasks import get_task_dict

    return get_task_dict(LOADED, manager)


def _builtin_config(task: str) -> dict:
    import lmms_eval
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(str(Path(lmms_eval.__file__).parent / "tasks" / BUILTIN_YAML[task]), mode="full")


def _default_kwargs(config: dict) -> dict | None:
    kwargs = config.get("lmms_eval_specific_kwargs")
    return None if kwargs is None else dict(kwargs.get("default", {}))


def _metrics(config: dict) -> list:
    return [(m["metric"], getattr(m["aggregation"], "__name__", m["aggregation"])) for m in config["metric_list"]]


def test_every_local_task_is_indexed_and_mirrors_a_builtin(manager):
    from lmms_eval.utils import load_yaml_config

    assert set(BUILTIN_YAML) == set(LOCAL_TASKS)
    assert set(LOCAL_TASKS) <= set(manager.all_tasks)
    assert set(LOCAL_GROUPS) <= set(manager.all_tasks)
    for task in LOCAL_TASKS:
        ours = load_yaml_config(manager.task_index[task]["yaml_path"], mode="full")
        builtin = _builtin_config(task)
        for key in (
            "output_type",
            "test_split",
            "generation_kwargs",
            "lmms_eval_specific_kwargs",
            "model_specific_generation_kwargs",
        ):
            assert ours.get(key) == builtin.get(key), f"{task}: {key} differs from {BUILTIN_YAML[task]}"
        assert _metrics(ours) == _metrics(builtin), task
        for key in ("doc_to_text", "process_results"):
            if callable(builtin.get(key)):
                assert ours[key].__name__ == builtin[key].__name__, f"{task}: {key}"
        assert set(ours["dataset_kwargs"]["data_files"]) == {ours["test_split"]}


@pytest.mark.parametrize("task", LOADED)
def test_local_task_loads_prompts_and_scores_like_the_builtin(task, loaded):
    obj = loaded[task]
    docs = obj.test_docs()
    assert len(docs) >= 2
    doc = docs[0]

    visual = obj.doc_to_visual(doc)
    assert isinstance(visual, list) and len(visual) == 1
    if task in VIDEO:
        assert isinstance(visual[0], str) and os.path.isfile(visual[0])
        assert visual[0].startswith(os.environ[offline_data.DATA_DIR_ENV])
    else:
        assert visual[0].mode == "RGB" and visual[0].size == (96, 96)

    builtin = _builtin_config(task)
    kwargs = _default_kwargs(builtin)
    expected = builtin["doc_to_text"](doc, kwargs) if kwargs is not None else builtin["doc_to_text"](doc)
    if task == "nextqa_mc_test_local":  # lmms-eval passes {} when a task has no specific kwargs
        expected = builtin["doc_to_text"](doc, {})
    assert obj.doc_to_text(doc) == expected

    right = obj.process_results(doc, [right_answer(task, doc)])
    if task.startswith(("coco", "nocaps", "flickr")):
        metric = next(iter(right))
        assert right[metric]["pred"] == right_answer(task, doc)
    elif task.startswith("mmbench"):
        assert right["submission"]["prediction"] == doc["answer"]
    else:
        assert score(task, right) == 1.0
        assert score(task, obj.process_results(doc, [wrong_answer(task, doc)])) == 0.0


def test_gqa_local_joins_images_on_image_id(loaded):
    docs = loaded["gqa_local"].test_docs()
    # two questions per drawn image: the same picture comes back for both
    first, second = (loaded["gqa_local"].doc_to_visual(docs[i])[0] for i in (0, 1))
    assert docs[0]["imageId"] == docs[1]["imageId"]
    assert first.tobytes() == second.tobytes()


def test_mmbench_static_aggregation_scores_right_letters(loaded, tmp_path):
    obj = loaded["mmbench_en_dev_static_local"]
    results = [obj.process_results(doc, [doc["answer"]])["gpt_eval_score"] for doc in obj.test_docs()]
    assert obj.aggregation()["gpt_eval_score"](results, SimpleNamespace(output_path=str(tmp_path))) == 100.0


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer needs Java")
def test_caption_aggregation_scores_a_reference_caption_highly(loaded, tmp_path):
    from lmms_eval.tasks.flickr30k.utils import flickr_bleu1

    obj = loaded["flickr30k_test_local"]
    results = [obj.process_results(doc, [doc["caption"][0]])["flickr_Bleu_1"] for doc in obj.test_docs()]
    assert flickr_bleu1(results, SimpleNamespace(output_path=str(tmp_path))) > 0.99


def test_groups_list_the_builtin_and_local_tasks(manager):
    from lmms_eval.utils import load_yaml_config

    def members(group):
        return load_yaml_config(str(TASKS_DIR / "groups" / f"{group}.yaml"), mode="simple")["task"]

    assert members("vistog_image") == [
        "gqa",
        "mmbench_en_dev",
        "mme",
        "pope",
        "scienceqa_img",
        "vqav2_val",
        "textvqa_val",
    ]
    assert members("vistog_caption") == ["coco2017_cap_val", "nocaps_val", "flickr30k_test"]
    assert members("vistog_video") == ["videomme", "mvbench", "nextqa_mc_test"]
    for group in ("vistog_image_local", "vistog_caption_local", "vistog_video_local"):
        assert tuple(members(group)) == LOCAL_GROUPS[group]
        assert all(t in manager.all_tasks for t in members(group))
    assert len(offline_data.expand_local_tasks(["vistog_video_local"])) == 22


def test_check_local_data_passes_on_the_fixture(mirror):
    names = list(LOCAL_TASKS) + list(LOCAL_GROUPS) + ["gqa", "mme"]
    assert check_local_data(names, mirror) == []
    assert check_local_data(["gqa", "textvqa_val"], None) == []  # hub tasks need no mirror


def test_check_local_data_names_each_missing_file(tmp_path, mirror):
    messages = check_local_data(["gqa_local", "vistog_caption_local"], tmp_path)
    assert len(messages) == 5  # GQA's two tables + three caption tables
    gqa = [m for m in messages if m.startswith("gqa_local needs")]
    assert str(tmp_path / "lmms-lab/GQA/testdev_balanced_instructions") in gqa[0]
    assert "copy lmms-lab/GQA's testdev_balanced_instructions parquet there" in gqa[0]
    assert "testdev_balanced_images" in gqa[1]
    assert all("docs/offline-data.md" in m for m in messages)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(offline_data.DATA_DIR_ENV, raising=False)
        assert check_local_data(["pope_local"], None) == [
            (
                "pope_local reads a local mirror, but no data dir is set: pass --data-dir DIR or set VISTOG_DATA_DIR, "
                "see docs/offline-data.md"
            )
        ]


def test_check_local_data_names_missing_videos_and_accepts_alias_folders(tmp_path, mirror):
    root = tmp_path / "m"
    shutil.copytree(mirror / "lmms-lab/Video-MME", root / "lmms-eval/Video-MME")  # lmms-eval 0.7.3's hub name
    assert check_local_data(["videomme_local"], root) == []
    video = next((root / "lmms-eval/Video-MME/data").glob("*.mp4"))
    video.unlink()
    assert check_local_data(["videomme_local"], root) == [
        f"videomme_local needs {video}; copy the video from lmms-lab/Video-MME there, see docs/offline-data.md"
    ]


def test_building_a_local_task_without_its_mirror_fails_with_the_same_message(manager, tmp_path):
    from lmms_eval.tasks import get_task_dict

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(offline_data.DATA_DIR_ENV, str(tmp_path))
        with pytest.raises(MissingLocalData) as err:
            get_task_dict(["pope_local"], manager)
    assert str(err.value) == check_local_data(["pope_local"], tmp_path)[0]


def test_fixture_cli_refuses_unknown_datasets(capsys, tmp_path):
    from vistog_bench.testing.fixtures import main

    assert main([str(tmp_path), "--only", "gqa,imagenet"]) == 2
    assert "imagenet" in capsys.readouterr().err


def test_lmms_eval_evaluates_local_tasks_end_to_end(manager, mirror):
    """simple_evaluate with an oracle model: requests carry the mirror's images and video paths, and right answers
    aggregate to full marks."""
    from lmms_eval import evaluator
    from lmms_eval.api.model import lmms

    class Oracle(lmms):
        def generate_until(self, requests):
            answers = []
            for request in requests:
                _, _, doc_to_visual, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                visual = doc_to_visual(doc)[0]
                assert os.path.isfile(visual) if task in VIDEO else visual.size == (96, 96)
                answers.append(right_answer(task, doc))
            return answers

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    out = evaluator.simple_evaluate(
        model=Oracle(), tasks=["gqa_local", "pope_local", "videomme_local"], task_manager=manager, verbosity="WARNING"
    )
    results = out["results"]
    assert results["gqa_local"]["exact_match,none"] == 1.0
    assert results["pope_local"]["pope_accuracy,none"] == 1.0
    assert results["videomme_local"]["videomme_perception_score,none"] == 100.0


def test_an_empty_table_or_a_missing_column_is_one_line_naming_file_and_column(tmp_path, mirror):
    """Read from the parquet footer before the run (issue 13): lmms-eval would otherwise fail after the model loaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "m"
    shutil.copytree(mirror / "lmms-lab/POPE", root / "lmms-lab/POPE")
    (table,) = (root / "lmms-lab/POPE/data").glob("test-*.parquet")
    assert check_local_data(["pope_local"], root) == []

    full = pq.read_table(table)
    pq.write_table(full.slice(0, 0), table)  # the hub schema, no rows
    assert check_local_data(["pope_local"], root) == [
        f"pope_local: {table} has no rows; copy lmms-lab/POPE's test parquet there again, see docs/offline-data.md"
    ]

    pq.write_table(full.drop(["category"]), table)
    (message,) = check_local_data(["pope_local"], root)
    assert message.startswith(f"pope_local: {table} has no column 'category' (its columns: answer, id, image, ")
    assert "the task reads image, question, question_id, answer, category" in message

    table.write_bytes(b"PAR1 cut short")
    (message,) = check_local_data(["pope_local"], root)
    assert message.startswith(f"pope_local: {table} is not a readable parquet file (")

    # GQA's image table is checked with its own columns; MVBench's json rows too
    shutil.copytree(mirror / "lmms-lab/GQA", root / "lmms-lab/GQA")
    (images,) = (root / "lmms-lab/GQA/testdev_balanced_images").glob("*.parquet")
    pq.write_table(pa.table({"id": pq.read_table(images).column("id")}), images)
    (message,) = check_local_data(["gqa_local"], root)
    assert message.startswith(f"gqa_local: {images} has no column 'image' (its columns: id)")
    shutil.copytree(mirror / "OpenGVLab/MVBench", root / "OpenGVLab/MVBench")
    entries = root / "OpenGVLab/MVBench/json/action_count.json"
    rows = json.loads(entries.read_text())
    entries.write_text(json.dumps([{k: v for k, v in r.items() if k != "candidates"} for r in rows]))
    (message,) = check_local_data(["mvbench_action_count_local"], root)
    assert message.startswith(f"mvbench_action_count_local: {entries} has no column 'candidates'")
    entries.write_text("[]")
    assert check_local_data(["mvbench_action_count_local"], root) == [
        f"mvbench_action_count_local: {entries} has no rows; copy OpenGVLab/MVBench's json/action_count.json there "
        "again, see docs/offline-data.md"
    ]


def test_the_mirror_tables_have_every_column_the_tasks_read(mirror):
    """The fixture writes the hub schemas; each local task's declared columns must be among them (and non-empty)."""
    import pyarrow.parquet as pq

    for name, task in LOCAL_TASKS.items():
        assert task.columns, name
        files = offline_data.data_files(name, mirror)[task.split]
        names = (
            set(json.loads(Path(files[0]).read_text())[0])
            if files[0].endswith(".json")
            else set(pq.read_schema(files[0]).names)
        )
        assert set(task.columns) <= names, (name, set(task.columns) - names)
