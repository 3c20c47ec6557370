"""The main job on checkpoints laid out exactly as llava-hf/llava-1.5-7b-hf is.

Fixtures (vistog_bench.testing.hub_checkpoints) copy the hub repo's published files — config.json,
generation_config.json, preprocessor_config.json, processor_config.json, chat_template.json (the template verbatim from
transformers' tests/models/llava/test_processing_llava.py), tokenizer.model / tokenizer.json / tokenizer_config.json /
special_tokens_map.json / added_tokens.json, sharded safetensors with the 4.x weight names — and the same checkpoint
re-saved by transformers 5 (chat_template.jinja, which the tokenizer loads too). A third copy has no template, as
llava-hf checkpoints older than chat templates: lmms-eval's llava_hf then uses LLaVA-1.5's vicuna_v1 conversation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image
from safetensors import safe_open

from vistog_bench.adapter import VisToGChatLMM, VisToGLMM
from vistog_bench.errors import UsageError
from vistog_bench.model import VisToGForConditionalGeneration, load_checkpoint
from vistog_bench.model.prompting import (
    LLAVA_PLAIN_CHAT_TEMPLATE,
    STRING,
    STRUCTURED,
    VICUNA_CHAT_TEMPLATE,
    PromptBuilder,
    Turn,
    find_template,
)
from vistog_bench.testing.hub_checkpoints import LLAVA_HF_CHAT_TEMPLATE

QUESTIONS = ["What is shown in this image?", "How many shapes are there?", "What colour is the shape?", "Is it red?"]
HUB_FILES = {
    "added_tokens.json",
    "chat_template.json",
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def layouts(llava_hf_layouts):
    return llava_hf_layouts


def images(count=4, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)) for _ in range(count)]


def task_dict(count=4):
    return {"toy": {"test": [{"image": i, "question": q} for i, q in zip(images(count), QUESTIONS, strict=True)]}}


def doc_to_messages(doc):  # what lmms-eval's ConfigurableMessagesTask builds from doc_to_visual + doc_to_text
    return [
        {"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]}
    ]


GEN = {"max_new_tokens": 6, "temperature": 0}


def chat_requests(count=4):
    return [
        Instance(
            "generate_until",
            ("", doc_to_messages, dict(GEN), i, "toy", "test"),
            0,
            {"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(count)
    ]


def simple_requests(count=4):
    return [
        Instance(
            "generate_until",
            (QUESTIONS[i], dict(GEN), lambda doc: [doc["image"]], i, "toy", "test"),
            0,
            {"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(count)
    ]


def answers(lm, requests):
    lm.task_dict = task_dict()
    return [r.text if hasattr(r, "text") else r for r in lm.generate_until(requests)]


# -- the fixtures are the published layouts ------------------------------------------------------------------------
def test_hub_layout_has_the_published_files_and_names(layouts):
    hub = layouts["hub"]
    assert {p.name for p in hub.iterdir()} == HUB_FILES
    config = json.loads((hub / "config.json").read_text())
    assert (config["model_type"], config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (
        "llava",
        -2,
        "default",
    )
    assert json.loads((hub / "chat_template.json").read_text()) == {"chat_template": LLAVA_HF_CHAT_TEMPLATE}
    assert "chat_template" not in json.loads((hub / "tokenizer_config.json").read_text())
    index = json.loads((hub / "model.safetensors.index.json").read_text())["weight_map"]
    assert {name.split(".")[0] for name in index} == {"language_model", "vision_tower", "multi_modal_projector"}
    added = json.loads((hub / "added_tokens.json").read_text())
    assert config["image_token_index"] == added["<image>"] and config["pad_token_id"] == added["<pad>"]


def test_resaved_layout_is_transformers_5s(layouts):
    resaved = layouts["resaved"]
    assert (resaved / "chat_template.jinja").read_text() == LLAVA_HF_CHAT_TEMPLATE
    assert not (resaved / "chat_template.json").exists()
    with safe_open(str(resaved / "model.safetensors"), "pt") as f:  # one file now; names as transformers 5 saves them
        assert len(list(f.keys())) == len(
            json.loads((layouts["hub"] / "model.safetensors.index.json").read_text())["weight_map"]
        )
    a, _ = load_checkpoint(layouts["hub"])
    b, processor = load_checkpoint(resaved)
    assert processor.tokenizer.chat_template == LLAVA_HF_CHAT_TEMPLATE  # the tokenizer loads the .jinja too
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tokenizer_is_the_sentencepiece_model(layouts):
    import sentencepiece as spm

    _, processor = load_checkpoint(layouts["hub"])
    sp = spm.SentencePieceProcessor(model_file=str(layouts["hub"] / "tokenizer.model"))
    text = "USER: What colour is the shape? ASSISTANT: a red circle, two squares."
    assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert processor.tokenizer(text)["input_ids"][0] == 1  # <s>


# -- templates ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout,source,style",
    [
        ("hub", "chat_template.json", STRUCTURED),
        ("resaved", "chat_template.jinja", STRUCTURED),
        ("no-template", "vicuna_v1", STRING),
    ],
)
def test_template_and_its_source_per_layout(layouts, layout, source, style):
    _, processor = load_checkpoint(layouts[layout])
    template = find_template(processor, layouts[layout])
    assert source in template.source and template.style == style


@pytest.mark.parametrize("layout", ["hub", "resaved"])
def test_prompt_equals_the_processors_own_rendering(layouts, layout):
    _, processor = load_checkpoint(layouts[layout])
    builder = PromptBuilder(find_template(processor, layouts[layout]), processor.tokenizer)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    expected = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert (
        builder.generation_prompt([Turn("user", QUESTIONS[0], 1)])
        == expected
        == f"USER: <image>\n{QUESTIONS[0]} ASSISTANT:"
    )
    two = builder.generation_prompt([Turn("user", "Compare them.", 2)])
    assert two.count("<image>") == 2 and "Compare them." in two


def test_no_template_gets_lmms_evals_vicuna_default(layouts):
    _, processor = load_checkpoint(layouts["no-template"])
    builder = PromptBuilder(find_template(processor, layouts["no-template"]), processor.tokenizer)
    expected = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{QUESTIONS[1]}"}],
        chat_template=VICUNA_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert builder.generation_prompt([Turn("user", QUESTIONS[1], 1)]) == expected
    assert expected.startswith("A chat between a curious user") and expected.endswith(
        f"USER: <image>\n{QUESTIONS[1]} ASSISTANT:"
    )


def test_embedded_checkpoint_keeps_its_plain_template():
    from vistog_bench import demo
    from vistog_bench.model.processing import llava_prompt

    path = demo.checkpoint_for_budget(None)
    _, processor = load_checkpoint(path)
    template = find_template(processor, path)
    assert template.text == LLAVA_PLAIN_CHAT_TEMPLATE and template.style == STRING
    builder = PromptBuilder(template, processor.tokenizer)
    assert builder.generation_prompt([Turn("user", "what colour is the shape ?", 1)]) == llava_prompt(
        "what colour is the shape ?"
    )


def test_override_template_file_and_a_template_that_loses_the_question(layouts, tmp_path):
    _, processor = load_checkpoint(layouts["hub"])
    plain = tmp_path / "plain.jinja"
    plain.write_text(LLAVA_PLAIN_CHAT_TEMPLATE)
    as_json = tmp_path / "chat_template.json"
    as_json.write_text(json.dumps({"chat_template": LLAVA_PLAIN_CHAT_TEMPLATE}))
    for path in (plain, as_json):
        template = find_template(processor, layouts["hub"], override=path)
        assert template.text == LLAVA_PLAIN_CHAT_TEMPLATE and str(path) in template.source and template.style == STRING
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for message in messages %}{{ message['role'] }}: {% endfor %}ASSISTANT:")
    with pytest.raises(UsageError, match="broken.jinja"):
        find_template(processor, layouts["hub"], override=broken)
    with pytest.raises(UsageError, match="not found"):
        find_template(processor, layouts["hub"], override=tmp_path / "missing.jinja")


def test_adapter_takes_a_template_file(layouts, tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text(LLAVA_PLAIN_CHAT_TEMPLATE)
    lm = VisToGLMM(pretrained=str(layouts["hub"]), method="none", budget=576, device="cpu", chat_template=str(plain))
    answers(lm, simple_requests(1))
    (entry,) = lm.take_sample_log()
    assert entry["prompt"] == f"USER: <image>\n{QUESTIONS[0]} ASSISTANT:" and lm.prompt_template.source.endswith(
        "plain.jinja"
    )


# -- parity with lmms-eval's llava_hf and transformers' documented usage -----------------------------------------------
@pytest.mark.parametrize("layout", ["hub", "resaved"])
def test_chat_answers_equal_lmms_eval_chat_llava_hf(layouts, layout):
    from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaHfChat

    ours = VisToGChatLMM(pretrained=str(layouts[layout]), method="none", budget=576, device="cpu", dtype="float32")
    reference = LlavaHfChat(pretrained=str(layouts[layout]), device="cpu", device_map="cpu", dtype="float32")
    got, expected = answers(ours, chat_requests()), answers(reference, chat_requests())
    assert got == expected and any(got)
    log = ours.take_sample_log()
    assert [e["prompt"] for e in log] and all(e["prompt"].count("<image>") == 1 for e in log)
    assert {q for q in QUESTIONS} == {e["prompt"].split("\n", 1)[1].rsplit(" ASSISTANT:", 1)[0] for e in log}


def test_force_simple_answers_equal_lmms_eval_simple_llava_hf_without_template(layouts):
    from lmms_eval.models.simple.llava_hf import LlavaHf

    ours = VisToGLMM(pretrained=str(layouts["no-template"]), method="none", budget=576, device="cpu", dtype="float32")
    reference = LlavaHf(pretrained=str(layouts["no-template"]), device="cpu", device_map="cpu", dtype="float32")
    got, expected = answers(ours, simple_requests()), answers(reference, simple_requests())
    assert got == expected and any(got)


@pytest.mark.parametrize("layout,chat", [("hub", True), ("resaved", True), ("no-template", False)])
def test_batched_answers_equal_batch_one(layouts, layout, chat):
    cls, make = (VisToGChatLMM, chat_requests) if chat else (VisToGLMM, simple_requests)
    path = str(layouts[layout])
    single = cls(pretrained=path, method="none", budget=576, device="cpu", batch_size=1)
    batched = cls(pretrained=path, method="none", budget=576, device="cpu", batch_size=3)
    assert answers(batched, make()) == answers(single, make())


def test_answers_equal_transformers_documented_usage(layouts):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = layouts["hub"]
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    expected = []
    for image, question in zip(images(), QUESTIONS, strict=True):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=GEN["max_new_tokens"], do_sample=False)
        expected.append(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    ours = VisToGChatLMM(pretrained=str(path), method="none", budget=576, device="cpu")
    assert answers(ours, chat_requests()) == expected


# -- reduced budgets on the real layouts -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["hub", "resaved"])
@pytest.mark.parametrize("method", ["pool", "visionzip", "fastv", "tome", "prumerge"])
def test_reducers_serve_real_layouts_at_64(layouts, layout, method):
    lm = VisToGChatLMM(pretrained=str(layouts[layout]), method=method, budget=64, device="cpu")
    assert all(isinstance(a, str) for a in answers(lm, chat_requests(2)))
    log = lm.take_sample_log()
    assert all("failure" not in e and e["prompt"].count("<image>") == 1 for e in log)
    assert {e["tokens_per_placeholder"] for e in log} == {576 if method == "fastv" else 64}


def test_vistog_checkpoint_from_a_real_layout_keeps_its_template(layouts, tmp_path):
    model, processor = load_checkpoint(layouts["hub"])
    torch.manual_seed(0)
    VisToGForConditionalGeneration.from_llava(model, num_semantic_tokens=64).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    lm = VisToGChatLMM(pretrained=str(tmp_path), method="vistog", budget=64, device="cpu")
    assert lm.prompt_template.style == STRUCTURED and lm.prompt_template.text == LLAVA_HF_CHAT_TEMPLATE
    answers(lm, chat_requests(1))
    assert lm.take_sample_log()[0]["prompt"] == f"USER: <image>\n{QUESTIONS[0]} ASSISTANT:"
