"""lmms-eval hooks for the embedded shapes tasks (vistog_bench.demo.world).

The test split is not shipped: `ShapesTask.download` writes it deterministically at first use into the cache
(vistog_bench.demo.ensure_test_data) and points `datasets`' parquet loader at it, so no run needs the network and the
YAMLs need no absolute path. Metrics follow lmms-eval's own tasks: exact match (VQA, video; per question type as well)
and COCO caption metrics through pycocoevalcap (captions, as tasks/coco_cap does).
"""

from lmms_eval.api.task import ConfigurableTask

from vistog_bench.demo import test_data_file
from vistog_bench.demo.evaluate import coco_caption_score, normalise_answer
from vistog_bench.demo.world import QUESTION_TYPES, VIDEO_QUESTION_TYPES

COCO_METRICS = ["Bleu_4", "Bleu_3", "Bleu_2", "Bleu_1", "METEOR", "ROUGE_L", "CIDEr"]


class ShapesTask(ConfigurableTask):
    """A YAML task whose parquet file is generated on first use (see the module docstring)."""

    def __init__(self, config=None, model_name=None, **kwargs):
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, model_name=model_name, **kwargs)

    def download(self, dataset_kwargs=None) -> None:
        dataset_kwargs = dict(dataset_kwargs or {})
        dataset_kwargs["data_files"] = {"test": str(test_data_file(self.config.task))}
        super().download(dataset_kwargs)


# -- VQA ---------------------------------------------------------------------------------------------------------------
def shapes_doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def shapes_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def _exact_match(doc, results) -> float:
    prediction = results[0] if results else ""
    return float(normalise_answer(prediction) == normalise_answer(doc["answer"]))


def shapes_vqa_process_results(doc, results):
    score = _exact_match(doc, results)
    per_type = {"question_type": doc["question_type"], "score": score}
    return {"exact_match": score, **{f"{t}_exact_match": per_type for t in QUESTION_TYPES}}


def _type_mean(results, question_type):
    scores = [r["score"] for r in results if r["question_type"] == question_type]
    return sum(scores) / len(scores) if scores else float("nan")


def shapes_colour(results):
    return _type_mean(results, "colour")


def shapes_shape(results):
    return _type_mean(results, "shape")


def shapes_count(results):
    return _type_mean(results, "count")


def shapes_position(results):
    return _type_mean(results, "position")


def shapes_exist(results):
    return _type_mean(results, "exist")


# -- video -------------------------------------------------------------------------------------------------------------
def shapes_video_doc_to_visual(doc):
    """The clip's frames in temporal order (one image placeholder each)."""
    return [frame.convert("RGB") for frame in doc["video"]]


def shapes_video_process_results(doc, results):
    score = _exact_match(doc, results)
    per_type = {"question_type": doc["question_type"], "score": score}
    return {"exact_match": score, **{f"{t}_exact_match": per_type for t in VIDEO_QUESTION_TYPES}}


def shapes_motion(results):
    return _type_mean(results, "motion")


def shapes_appear(results):
    return _type_mean(results, "appear")


# -- captions (COCO metrics, as lmms-eval's coco_cap) ------------------------------------------------------------------
def shapes_caption_process_results(doc, results):
    prediction = results[0] if results else ""
    data = {"answer": list(doc["answer"]), "pred": prediction, "image_id": int(doc["image_id"]), "id": int(doc["id"])}
    return {f"shapes_{metric}": data for metric in COCO_METRICS}


def _coco(metric):
    def aggregate(results):
        return coco_caption_score(results, metric)

    aggregate.__name__ = f"shapes_{metric.lower()}"
    return aggregate


shapes_bleu4 = _coco("Bleu_4")
shapes_bleu3 = _coco("Bleu_3")
shapes_bleu2 = _coco("Bleu_2")
shapes_bleu1 = _coco("Bleu_1")
shapes_meteor = _coco("METEOR")
shapes_rougel = _coco("ROUGE_L")
shapes_cider = _coco("CIDEr")
