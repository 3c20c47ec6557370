"""LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL on tiny random checkpoints in their hub repos' layouts
(vistog_bench.testing.hub_checkpoints_families: configs, processor configs and chat templates copied from the published
files, sources in that module): loading by config.model_type, prompts from each family's own template, full-budget
answers equal to transformers' documented usage and to lmms-eval's own models, reducers at the LLM input under each
family's budget rule, and one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image
from safetensors import safe_open

from vistog_bench.adapter import VisToGChatLMM
from vistog_bench.errors import UsageError
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import family_inputs, find_family, image_runs, image_token_id
from vistog_bench.model.loading import load_config
from vistog_bench.model.prompting import STRUCTURED, PromptBuilder, Turn, find_template
from vistog_bench.reducers import config_problem
from vistog_bench.reducers.families import apply_family_method, remove_family_method
from vistog_bench.testing.hub_checkpoints_families import (
    LLAVA_HUB_NAMES,
    NEXT_MISTRAL_CHAT_TEMPLATE,
    ONEVISION_CHAT_TEMPLATE,
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN_HUB_NAMES,
    _rename,
    write_family_layouts,
)

NAMES = {"llava-next": "llava_next", "llava-onevision": "llava_onevision", "qwen2.5-vl": "qwen2_5_vl"}
TEMPLATES = {
    "llava-next": NEXT_MISTRAL_CHAT_TEMPLATE,
    "llava-onevision": ONEVISION_CHAT_TEMPLATE,
    "qwen2.5-vl": QWEN2_5_VL_CHAT_TEMPLATE,
}
QUESTIONS = ["What is shown in this image?", "How many shapes are there?", "What colour is the shape?"]
SIZES = [(300, 400), (336, 336), (200, 500)]  # (H, W): different sizes give different counts
GEN = {"max_new_tokens": 5, "temperature": 0}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_family_layouts(tmp_path_factory.mktemp("families"))


def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def doc_to_messages(doc):
    return [
        {"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]}
    ]


def requests():
    return [
        Instance(
            "generate_until",
            ("", doc_to_messages, dict(GEN), i, "toy", "test"),
            0,
            {"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(len(QUESTIONS))
    ]


def answers(lm):
    lm.task_dict = {"toy": {"test": [{"image": i, "question": q} for i, q in zip(images(), QUESTIONS, strict=True)]}}
    return [r.text if hasattr(r, "text") else r for r in lm.generate_until(requests())]


def documented_answers(path, cls):
    """transformers' documented usage: processor.apply_chat_template, processor(images, text), generate."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for image, question in zip(images(), QUESTIONS, strict=True):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=GEN["max_new_tokens"], do_sample=False)
        out.append(processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


# -- the layouts and loading ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_layout_is_the_hub_repos_and_loads_by_model_type(layouts, name):
    path = layouts[name]
    assert json.loads((path / "chat_template.json").read_text()) == {"chat_template": TEMPLATES[name]}
    assert "chat_template" not in json.loads((path / "tokenizer_config.json").read_text())
    assert load_config(path).model_type == NAMES[name]
    model, processor = load_checkpoint(path)
    assert type(model).__name__ == find_family(NAMES[name]).stock_class().__name__ and not model.training
    # every weight on disk (hub names) is the loaded model's: nothing left at random initialisation
    names = LLAVA_HUB_NAMES if name != "qwen2.5-vl" else QWEN_HUB_NAMES
    expected = _rename(model.state_dict(), names)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(expected)
    for file in set(index.values()):
        with safe_open(str(path / file), "pt") as shard:
            for key in shard.keys():  # noqa: SIM118 - safe_open has no __iter__
                assert torch.equal(shard.get_tensor(key).float(), expected[key].float()), key
    template = find_template(processor, path)
    assert template.style == STRUCTURED and template.text == TEMPLATES[name]


@pytest.mark.parametrize("name", NAMES)
def test_prompt_equals_the_processors_own_rendering(layouts, name):
    _, processor = load_checkpoint(layouts[name])
    builder = PromptBuilder(find_template(processor, layouts[name]), processor.tokenizer, processor.image_token)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    assert builder.generation_prompt([Turn("user", QUESTIONS[0], 1)]) == processor.apply_chat_template(
        conversation, add_generation_prompt=True
    )


def test_visual_token_counts_follow_each_familys_processor(layouts):
    counts = {}
    for name in NAMES:
        model, processor = load_checkpoint(layouts[name])
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
            add_generation_prompt=True,
        )
        inputs = family_inputs(processor, [prompt] * 3, [[i] for i in images()])
        counts[name] = [[int(r.numel()) for r in image_runs(ids, image_token_id(model))] for ids in inputs["input_ids"]]
    # NeXT: 576 base + tiles of 576 with newline tokens, > 576 for every image; depends on the aspect ratio
    assert all(c[0] > 576 for c in counts["llava-next"]) and len({c[0] for c in counts["llava-next"]}) == 3
    assert all(c[0] > 729 for c in counts["llava-onevision"])
    # Qwen2.5-VL: one token per 28 x 28 px after resizing to multiples of 28: 336 x 336 -> 12 x 12 = 144
    assert counts["qwen2.5-vl"][1] == [144] and len({c[0] for c in counts["qwen2.5-vl"]}) == 3


# -- full budget: the stock model's answers --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_full_budget_answers_equal_transformers_documented_usage(layouts, name):
    cls = find_family(NAMES[name]).stock_class()
    expected = documented_answers(layouts[name], cls)
    ours = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu")
    got = answers(ours)
    assert got == expected and any(got)
    log = ours.take_sample_log()
    assert all(e["visual_tokens"] == e["visual_tokens_unreduced"] and e["visual_tokens"][0] > 100 for e in log)
    batched = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu", batch_size=2)
    assert answers(batched) == expected


@pytest.mark.parametrize("name", ["llava-next", "llava-onevision"])
def test_full_budget_answers_equal_lmms_eval_chat_llava_hf(layouts, name):
    from lmms_eval.models.chat.llava_hf import LlavaHf

    reference = LlavaHf(pretrained=str(layouts[name]), device="cpu", device_map="cpu", dtype="float32")
    ours = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu")
    got, expected = answers(ours), answers(reference)
    assert got == expected and any(got)


# -- reducers at the LLM input ---------------------------------------------------------------------------------------
def _layer0_visual_counts(model, inputs) -> list[int]:
    """Sequence length entering decoder layer 0 minus the text tokens: the visual tokens the LLM received."""
    seen = []
    layer = model.model.language_model.layers[0]
    handle = layer.register_forward_pre_hook(
        lambda m, a, k: seen.append((k.get("hidden_states", a[0] if a else None)).shape[1]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize(
    "name,method,budget",
    [
        ("llava-next", "random", 300),
        ("llava-next", "divprune", 300),
        ("llava-onevision", "divprune", 500),
        ("qwen2.5-vl", "random", 25),
        ("qwen2.5-vl", "divprune", 25),
        ("llava-next", "cdpruner", 300),
        ("qwen2.5-vl", "cdpruner", 25),
    ],
)
def test_reducer_gives_layer_0_the_budget_rules_count(layouts, name, method, budget):
    model, processor = load_checkpoint(layouts[name])
    family = find_family(NAMES[name])
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True
    )
    image = images()[0]
    inputs = family_inputs(processor, [prompt], [[image]])
    total = inputs["input_ids"].shape[1]
    unreduced = int((inputs["input_ids"] == image_token_id(model)).sum())
    assert _layer0_visual_counts(model, inputs) == [total]
    apply_family_method(model, method, budget)
    keep = family.kept_tokens(budget, unreduced)
    assert keep < unreduced
    assert _layer0_visual_counts(model, inputs) == [total - unreduced + keep]
    remove_family_method(model)
    assert _layer0_visual_counts(model, inputs) == [total]


@pytest.mark.parametrize("name,budget", [("llava-next", 10_000), ("qwen2.5-vl", 100)])
def test_random_at_full_budget_answers_as_none(layouts, name, budget):
    none = answers(VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu"))
    full = VisToGChatLMM(pretrained=str(layouts[name]), method="random", budget=budget, device="cpu", batch_size=2)
    assert answers(full) == none


def test_reduced_answers_are_batch_independent_and_log_both_counts(layouts):
    path = str(layouts["qwen2.5-vl"])
    single = VisToGChatLMM(pretrained=path, method="divprune", budget=25, device="cpu")
    batched = VisToGChatLMM(pretrained=path, method="divprune", budget=25, device="cpu", batch_size=3)
    assert answers(batched) == answers(single)
    log = single.take_sample_log()
    assert [e["visual_tokens"][0] for e in log] == [
        int(e["visual_tokens_unreduced"][0] / 4 + 0.5) for e in log
    ]  # half up


@pytest.mark.parametrize("method", ["prumerge", "tome", "pool", "fastv", "holitom", "vistog"])
def test_methods_that_cannot_apply_are_refused_in_one_line(layouts, method):
    config = load_config(layouts["qwen2.5-vl"])
    problem = config_problem(config, method, budget=25)
    assert problem and "\n" not in problem and "qwen2_5_vl" in problem
    with pytest.raises(UsageError, match=method):
        VisToGChatLMM(pretrained=str(layouts["qwen2.5-vl"]), method=method, budget=25, device="cpu")
    assert all(
        config_problem(config, m, budget=25) is None
        for m in ("random", "divprune", "cdpruner", "visionzip", "vispruner")
    )


@pytest.mark.parametrize("budget", [0, 101])
def test_qwen_budget_is_a_percentage(layouts, budget):
    with pytest.raises(UsageError, match="percentage"):
        VisToGChatLMM(pretrained=str(layouts["qwen2.5-vl"]), method="random", budget=budget, device="cpu")


def test_none_with_a_reduced_budget_is_refused(layouts):
    with pytest.raises(UsageError, match="method none keeps every visual token"):
        VisToGChatLMM(pretrained=str(layouts["llava-next"]), method="none", budget=64, device="cpu")


def test_full_budget_answers_equal_lmms_eval_chat_qwen2_5_vl(layouts):
    """lmms-eval's qwen2_5_vl resizes with qwen_vl_utils at its own min / max pixels (default min 256 x 28 x 28,
    above the checkpoint's 3136): given the checkpoint's published limits, it answers as the adapter does."""
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

    path = str(layouts["qwen2.5-vl"])
    reference = Qwen2_5_VL(pretrained=path, device="cpu", device_map="cpu", min_pixels=3136, max_pixels=12845056)
    ours = VisToGChatLMM(pretrained=path, method="none", device="cpu")
    got, expected = answers(ours), answers(reference)
    assert got == expected and any(got)


def test_onevision_multi_image_sample_fails_alone_under_a_reducer(layouts):
    """OneVision's template renders images side by side: with a per-image reducer such a sample fails alone (its
    reason logged, its answer empty), single-image samples of the batch are served."""
    lm = VisToGChatLMM(
        pretrained=str(layouts["llava-onevision"]), method="random", budget=300, device="cpu", batch_size=2
    )
    docs = [{"image": images()[:2], "question": QUESTIONS[0]}, {"image": [images()[1]], "question": QUESTIONS[1]}]
    lm.task_dict = {"toy": {"test": docs}}

    def two_images(doc):
        return [
            {
                "role": "user",
                "content": [
                    *({"type": "image", "url": im} for im in doc["image"]),
                    {"type": "text", "text": doc["question"]},
                ],
            }
        ]

    reqs = [
        Instance(
            "generate_until",
            ("", two_images, dict(GEN), i, "toy", "test"),
            0,
            {"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(2)
    ]
    out = [r.text for r in lm.generate_until(reqs)]
    log = {e["doc_id"]: e for e in lm.take_sample_log()}
    assert out[0] == "" and "side by side" in log[0]["failure"]
    assert "failure" not in log[1] and log[1]["visual_tokens"] == [300] and out[1] != ""


def layer0_states(model, method: str, budget: int, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's input states before and after the method's stage: [B, T, D], [B, T', D]."""
    layer = model.model.language_model.layers[0]
    seen = {}

    def keep_as(key):
        def hook(module, args, kwargs):
            seen[key] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    handles = [layer.register_forward_pre_hook(keep_as("before"), with_kwargs=True)]  # before the pruner's hook
    apply_family_method(model, method, budget)
    handles.append(layer.register_forward_pre_hook(keep_as("after"), with_kwargs=True))
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen["before"], seen["after"]


@pytest.mark.parametrize("name", ["llava-next", "qwen2.5-vl"])
def test_divprune_keeps_the_max_min_diverse_tokens_of_the_projected_states(layouts, name):
    """The states layer 0 receives are the unreduced ones at DivPrune's choice (max-min diversity over the image's
    projected tokens, reducers/divprune.py), in order, with every text token."""
    from vistog_bench.reducers.divprune import max_min_diversity

    model, processor = load_checkpoint(layouts[name])
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True
    )
    inputs = family_inputs(processor, [prompt], [images()[:1]])
    budget = 30 if name == "qwen2.5-vl" else 200
    before, after = (states[0] for states in layer0_states(model, "divprune", budget, inputs))
    (run,) = image_runs(inputs["input_ids"][0], image_token_id(model))
    keep = find_family(NAMES[name]).kept_tokens(budget, run.numel())
    chosen = run[max_min_diversity(before[run], keep)].sort().values
    text = torch.ones(before.shape[0], dtype=torch.bool)
    text[run] = False
    expected = torch.zeros_like(text)
    expected[chosen] = True
    assert torch.equal(after, before[text | expected])
