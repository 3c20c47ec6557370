"""VisToG on LLaVA-NeXT (CLIP) and LLaVA-OneVision (SigLIP), per view, on the tiny hub-layout checkpoints: patch
features equal the stock encoder's with semantic tokens present (isolated attention), VisToG off is the stock model,
the LLM receives views x N tokens per image, batches answer as batch 1, the VisToG parts get gradients; saved as a
transformers model (config.json + model.safetensors) and loaded back, and a folder in the earlier format
(vistog_family.json + vistog_parts.safetensors beside the stock files) still loads with the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vistog_bench.errors import UsageError
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import family_inputs, image_token_id
from vistog_bench.model.loading import load_config
from vistog_bench.model.modeling_views import (
    VisToGLlavaNextForConditionalGeneration,
    VisToGLlavaOnevisionForConditionalGeneration,
    VisToGViews,
)
from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

WRAP = {
    "llava-next": VisToGLlavaNextForConditionalGeneration.from_stock,
    "llava-onevision": VisToGLlavaOnevisionForConditionalGeneration.from_stock,
}
SIZES = [(300, 400), (336, 700), (500, 200)]
QUESTIONS = ["What is shown in this image?", "How many shapes are there?", "What colour is the shape?"]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_family_layouts(tmp_path_factory.mktemp("families-vistog"))


def images():
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (*s, 3), dtype=np.uint8)) for s in SIZES]


def prompts(processor, count=3):
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in QUESTIONS[:count]
    ]


def wrapped(layouts, name, n=16):
    model, processor = load_checkpoint(layouts[name])
    torch.manual_seed(0)
    return WRAP[name](model, num_semantic_tokens=n), model, processor


@pytest.mark.parametrize("name", WRAP)
def test_patch_features_equal_the_stock_encoders_with_semantic_tokens(layouts, name):
    vt, model, processor = wrapped(layouts, name)
    data = vt.inputs(processor, prompts(processor), [[i] for i in images()])
    config = model.config
    first = 1 if config.vision_feature_select_strategy == "default" else 0
    for views, count in zip(data["pixel_values"], vt.views_per_image(data["image_sizes"]), strict=True):
        with torch.no_grad():
            patches, semantic = vt.vision_states(views[:count])
            stock = model.model.vision_tower(views[:count], output_hidden_states=True).hidden_states
        assert torch.equal(patches, stock[config.vision_feature_layer][:, first:])
        assert semantic.shape == (count, 16, config.vision_config.hidden_size)
        # isolation: other semantic tokens change the group tokens, never the patch features
        with torch.no_grad():
            vt.semantic_tokens.mul_(2.0)
            moved, moved_semantic = vt.vision_states(views[:count])
            vt.semantic_tokens.mul_(0.5)
        assert torch.equal(moved, patches) and not torch.allclose(moved_semantic, semantic)


@pytest.mark.parametrize("name", WRAP)
def test_vistog_off_is_the_stock_model(layouts, name):
    model, _ = load_checkpoint(layouts[name])
    assert WRAP[name](model, num_semantic_tokens=None) is model


@pytest.mark.parametrize("name", WRAP)
def test_llm_receives_views_times_n_and_batches_answer_as_batch_one(layouts, name):
    vt, model, processor = wrapped(layouts, name)
    data = vt.inputs(processor, prompts(processor), [[i] for i in images()])
    views = vt.views_per_image(data["image_sizes"])
    assert (data["input_ids"] == image_token_id(model)).sum(1).tolist() == [v * 16 for v in views]
    assert views == [int((pv.flatten(1).abs().sum(1) > 0).sum()) for pv in data["pixel_values"]]  # unpadded views
    data.pop("visual_tokens_unreduced")
    batched = vt.generate(**data, max_new_tokens=4, do_sample=False)
    for b, (prompt, image) in enumerate(zip(prompts(processor), images(), strict=True)):
        one = vt.inputs(processor, [prompt], [[image]])
        one.pop("visual_tokens_unreduced")
        single = vt.generate(**one, max_new_tokens=4, do_sample=False)
        length = one["input_ids"].shape[1]
        assert torch.equal(single[0, length:], batched[b, data["input_ids"].shape[1] :])


def test_group_tokens_reach_the_logits_and_get_gradients(layouts):
    vt, _, processor = wrapped(layouts, "llava-next")
    data = vt.inputs(processor, prompts(processor, 1), [images()[:1]])
    data.pop("visual_tokens_unreduced")
    vt.train()
    logits = vt(**data).logits
    logits[:, -1].logsumexp(-1).sum().backward()
    assert vt.semantic_tokens.grad is not None and vt.semantic_tokens.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vt.grouping.parameters())
    vt.eval()
    with torch.no_grad():
        before = vt(**data).logits
        vt.semantic_tokens.add_(1.0)
        after = vt(**data).logits
    assert not torch.allclose(before, after)


def test_other_families_and_bad_prompts_are_refused(layouts):
    qwen, _ = load_checkpoint(layouts["qwen2.5-vl"])
    with pytest.raises(UsageError, match="wraps LlavaNextForConditionalGeneration, not Qwen2_5_VL"):
        VisToGLlavaNextForConditionalGeneration.from_stock(qwen, 16)
    vt, _, processor = wrapped(layouts, "llava-next")
    stock_inputs = family_inputs(processor, prompts(processor, 1), [images()[:1]])  # the anyres count, not views x N
    with pytest.raises(UsageError, match="image tokens: .* group tokens"):
        vt.inputs_embeds(stock_inputs["input_ids"], stock_inputs["pixel_values"], stock_inputs["image_sizes"])


def write_earlier_format(vt, stock, out) -> None:
    """`vt` saved as the per-view VisToG was saved before it was a transformers model (a copy of
    `VisToGFamily.save_pretrained`, vistog_bench/model/families_vistog.py at commit ddec5ea): the stock model's
    `save_pretrained` (`stock` shares vt's modules), `vistog_parts.safetensors` with the semantic tokens and the
    grouping layer under their own names, and `vistog_family.json` with N and the settings."""
    import json

    from safetensors.torch import save_file

    from vistog_bench.model.modeling_views import LEGACY_PARTS_FILE, LEGACY_SETTINGS_FILE

    stock.save_pretrained(out)
    parts = {k: v.detach().contiguous() for k, v in vt.state_dict().items() if k.startswith(("semantic_", "grouping."))}
    save_file(parts, str(out / LEGACY_PARTS_FILE), metadata={"format": "pt"})
    settings = {"num_semantic_tokens": vt.num_semantic_tokens, "isolated_attention": True, "grouping_mlp_ratio": 4.0}
    settings.update(gumbel_tau=1.0, grouping_logit_scale=10.0)
    (out / LEGACY_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


@pytest.mark.parametrize("name", WRAP)
def test_saved_vistog_loads_back_with_equal_logits_in_both_formats(layouts, name, tmp_path):
    import json

    vt, model, processor = wrapped(layouts, name)
    data = vt.inputs(processor, prompts(processor, 1), [images()[:1]])
    data.pop("visual_tokens_unreduced")
    with torch.no_grad():
        expected = vt.eval()(**data).logits
    vt.save_pretrained(tmp_path / "now")
    processor.save_pretrained(tmp_path / "now")
    saved = json.loads((tmp_path / "now" / "config.json").read_text())
    assert saved["model_type"] == f"vistog_{model.config.model_type}" and saved["num_semantic_tokens"] == 16
    write_earlier_format(vt, model, tmp_path / "earlier")
    processor.save_pretrained(tmp_path / "earlier")
    assert json.loads((tmp_path / "earlier" / "config.json").read_text())["model_type"] == model.config.model_type
    for folder in ("now", "earlier"):
        assert load_config(tmp_path / folder).num_semantic_tokens == 16
        loaded, _ = load_checkpoint(tmp_path / folder)
        assert type(loaded) is type(vt) and loaded.num_semantic_tokens == 16
        with torch.no_grad():
            assert torch.equal(loaded(**data).logits, expected), folder
    (tmp_path / "earlier" / "vistog_parts.safetensors").unlink()
    with pytest.raises(UsageError, match="holds no VisToG parts"):
        load_checkpoint(tmp_path / "earlier")


@pytest.mark.parametrize("name", WRAP)
def test_adapter_serves_a_saved_vistog_checkpoint(layouts, name, tmp_path):
    from lmms_eval.api.instance import Instance

    from vistog_bench.adapter import VisToGChatLMM

    vt, _, processor = wrapped(layouts, name)
    vt.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    assert isinstance(loaded, VisToGViews)
    lm = VisToGChatLMM(pretrained=str(tmp_path), method="vistog", device="cpu", batch_size=2)
    assert lm.budget == 16
    docs = [{"image": image, "question": q} for image, q in zip(images(), QUESTIONS, strict=True)]
    lm.task_dict = {"toy": {"test": docs}}

    def doc_to_messages(doc):
        return [
            {
                "role": "user",
                "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}],
            }
        ]

    gen = {"max_new_tokens": 4, "temperature": 0}
    reqs = [
        Instance(
            "generate_until",
            ("", doc_to_messages, dict(gen), i, "toy", "test"),
            0,
            {"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(3)
    ]
    got = [r.text for r in lm.generate_until(reqs)]
    expected = []
    for prompt, image in zip(prompts(processor), images(), strict=True):
        one = vt.inputs(processor, [prompt], [[image]])
        one.pop("visual_tokens_unreduced")
        ids = vt.generate(**one, max_new_tokens=4, do_sample=False)
        expected.append(processor.decode(ids[0, one["input_ids"].shape[1] :], skip_special_tokens=True))
    assert got == expected
    log = sorted(lm.take_sample_log(), key=lambda e: e["doc_id"])
    stock = family_inputs(processor, prompts(processor), [[i] for i in images()])
    assert [e["visual_tokens_unreduced"] for e in log] == [
        [int((ids == image_token_id(vt)).sum())] for ids in stock["input_ids"]
    ]
    views = vt.views_per_image(stock["image_sizes"])
    assert [e["visual_tokens"] for e in log] == [[v * 16] for v in views]
    with pytest.raises(UsageError, match="this VisToG checkpoint gives 16 tokens per view"):
        VisToGChatLMM(pretrained=str(tmp_path), method="vistog", budget=32, device="cpu")
    with pytest.raises(UsageError, match="runs on the stock model"):
        VisToGChatLMM(pretrained=str(tmp_path), method="random", budget=100, device="cpu")
    with pytest.raises(UsageError, match="needs a VisToG checkpoint"):
        VisToGChatLMM(pretrained=str(layouts[name]), method="vistog", device="cpu")


def test_save_pretrained_writes_a_given_state_dict(layouts, tmp_path):
    """The trainer saves weights gathered from FSDP shards: `state_dict=` (this module's keys) is what is written."""
    vt, _, processor = wrapped(layouts, "llava-onevision")
    state = {k: v.clone() for k, v in vt.state_dict().items()}
    state["semantic_tokens"] += 1.0
    projector = next(k for k in state if k.startswith("model.multi_modal_projector."))
    state[projector] += 1.0
    vt.save_pretrained(tmp_path, state_dict=state)
    processor.save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path)[0].state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not torch.equal(loaded["semantic_tokens"], vt.semantic_tokens)
