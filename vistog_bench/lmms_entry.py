"""lmms-eval entry point (`[project.entry-points."lmms_eval.models"]`): makes `--model vistog` resolvable.

A callable, so that lmms-eval's registry imports nothing of ours until it builds its manifests, and the adapter
(heavy: torch, transformers) is imported only when the model is used. lmms-eval 0.7 resolves a name to its chat class
first (`VisToGChatLMM`) and to the simple class with `--force_simple` (`VisToGLMM`), as it does for its own models.
"""


def model_manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="vistog",
        simple_class_path="vistog_bench.adapter.VisToGLMM",
        chat_class_path="vistog_bench.adapter.VisToGChatLMM",
    )
