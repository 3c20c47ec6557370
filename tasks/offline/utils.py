"""Task functions the local tasks cannot take from lmms-eval as they are: those that read media from the hub cache.

Everything else (prompts, process_results, aggregations) the YAMLs import from lmms_eval.tasks.<task>.utils, so the
metrics equal the built-in tasks'.
"""

import os

from vistog_bench.run.offline_data import gqa_image, video_file


def gqa_local_doc_to_visual(doc):
    # lmms-eval's gqa joins the image table in process_docs; the mirror keeps the join key and looks it up here.
    return [gqa_image(doc["imageId"])]


def videomme_local_doc_to_visual(doc):
    return [video_file("videomme_local", doc["videoID"])]


def nextqa_local_doc_to_visual(doc):
    return [video_file("nextqa_mc_test_local", doc["video"])]


def mvbench_local_doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    return [video_file(f"mvbench_{lmms_eval_specific_kwargs['sub_task']}_local", doc["video"])]


def _nextqa():
    """lmms-eval's nextqa utils, imported the offline way.

    At import they read $HF_HOME (KeyError when unset: we default it to the hub's own default) and call
    nltk.download for the open-ended WUPS metric, which can hang on a machine without network. The multiple-choice
    functions used here need no nltk data, so those downloads are skipped.
    """
    import sys

    if "lmms_eval.tasks.nextqa.utils" not in sys.modules:
        os.environ.setdefault("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
        try:
            import nltk
        except ImportError:
            nltk = None
        download = getattr(nltk, "download", None)
        if nltk is not None:
            nltk.download = lambda *args, **kwargs: False
        try:
            import lmms_eval.tasks.nextqa.utils  # noqa: F401
        finally:
            if nltk is not None:
                nltk.download = download
    return sys.modules["lmms_eval.tasks.nextqa.utils"]


def nextqa_doc_to_text_mc(doc, lmms_eval_specific_kwargs=None):
    return _nextqa().nextqa_doc_to_text_mc(doc, lmms_eval_specific_kwargs)


def nextqa_doc_to_target(doc):
    return _nextqa().nextqa_doc_to_target(doc)


def nextqa_mc_process_results(doc, results):
    return _nextqa().nextqa_mc_process_results(doc, results)
