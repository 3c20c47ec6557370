"""The VisToG model on transformers' LLaVA: contracts, exactness of isolated attention, grouping, round trips."""

import pytest
import torch
from testers import random_images, save_tiny_llava, tiny_llava, tiny_processor
from transformers import CLIPVisionModel

from vistog_bench.errors import UsageError
from vistog_bench.model import (
    VisToGConfig,
    VisToGForConditionalGeneration,
    build_inputs,
    llava_prompt,
    load_checkpoint,
    preset_config,
)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.fixture(scope="module")
def pixels():
    processor = tiny_processor()
    return processor.image_processor(random_images(2), return_tensors="pt")["pixel_values"]


def vistog(llava, n):
    torch.manual_seed(1)
    return VisToGForConditionalGeneration.from_llava(llava, num_semantic_tokens=n).eval()


def test_patch_states_equal_stock_clip_and_semantic_states_read_the_image(llava, pixels):
    model = vistog(llava, 64)
    stock = CLIPVisionModel(llava.config.vision_config)
    stock.load_state_dict(llava.model.vision_tower.state_dict())
    with torch.no_grad():
        reference = stock.eval()(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # [B, P, Dv]
        patches, semantic = model.vision_states(pixels)
        _, semantic_other = model.vision_states(pixels.flip(0))
    assert patches.shape == (2, 576, 32) and semantic.shape == (2, 64, 32)
    torch.testing.assert_close(patches, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(semantic[0], semantic[1], atol=1e-4)  # depends on the image
    torch.testing.assert_close(semantic_other[0], semantic[1])


def test_without_isolation_patch_states_change(llava, pixels):
    torch.manual_seed(1)
    leaky = VisToGForConditionalGeneration.from_llava(llava, 64, isolated_attention=False).eval()
    with torch.no_grad():
        patches, _ = leaky.vision_states(pixels)
        isolated, _ = vistog(llava, 64).vision_states(pixels)
    assert (patches - isolated).abs().max() > 1e-4


def test_vistog_off_logits_equal_stock_llava(llava, pixels):
    model = vistog(llava, None)
    processor = tiny_processor()
    inputs = build_inputs(processor, [llava_prompt("what colour is the shape ?")], [random_images(1)], 576)
    with torch.no_grad():
        stock = llava(**inputs).logits
        ours = model(**inputs).logits
    assert model.num_visual_tokens == 576
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [576, 64, 16])
def test_visual_tokens_and_generate_at_budget(llava, n):
    model = vistog(llava, n)
    processor = tiny_processor()
    images = random_images(2, seed=3)
    with torch.no_grad():
        tokens = model.visual_tokens(processor.image_processor(images, return_tensors="pt")["pixel_values"])
        assert tokens.shape == (2, n, 64)
        prompts = [llava_prompt("what colour is the shape ?"), llava_prompt("is there a red circle ?")]
        batch = build_inputs(processor, prompts, [[images[0]], [images[1]]], n)
        together = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)[:, -4:]
        for i in range(2):
            alone = build_inputs(processor, [prompts[i]], [[images[i]]], n)
            single = model.generate(**alone, max_new_tokens=4, min_new_tokens=4, do_sample=False)[:, -4:]
            assert torch.equal(single[0], together[i])


def test_wrong_placeholder_count_raises(llava):
    model = vistog(llava, 16)
    processor = tiny_processor()
    inputs = build_inputs(processor, [llava_prompt("what colour ?")], [random_images(1)], 15)
    with pytest.raises(ValueError, match="tokens: 15"):
        model(**inputs)


def test_eval_assignment_is_one_hot_and_training_reaches_vistog_parts(llava, pixels):
    model = vistog(llava, 16)
    grouping = model.model.grouping
    with torch.no_grad():
        patches, semantic = model.vision_states(pixels)
        assign = grouping.assignment(semantic, grouping.norm_patches(patches))  # [B, N, P]
    assert assign.shape == (2, 16, 576)
    assert torch.equal(assign.sum(dim=1), torch.ones(2, 576))
    assert set(assign.unique().tolist()) <= {0.0, 1.0}

    model.train()
    tokens = model.visual_tokens(pixels)
    tokens.pow(2).mean().backward()
    assert model.model.vision_tower.semantic_tokens.grad.abs().sum() > 0
    assert grouping.q_proj.weight.grad.abs().sum() > 0  # through the straight-through assignment
    assert grouping.v_proj.weight.grad.abs().sum() > 0
    assert grouping.log_logit_scale.grad.abs() > 0  # the learnt logit scale trains too
    model.zero_grad()
    model.eval()


def test_save_and_load_round_trip(llava, tmp_path):
    model = vistog(llava, 16)
    processor = tiny_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    assert isinstance(loaded.config, VisToGConfig) and loaded.config.num_semantic_tokens == 16
    inputs = build_inputs(processor, [llava_prompt("how many shapes ?")], [random_images(1, seed=5)], 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_a_checkpoint_with_the_earlier_scalar_grouping_scale_loads_unchanged(llava, tmp_path):
    """The grouping scale is [1] (FSDP2 shards no 0-d parameter); a checkpoint written while it was 0-d loads with its
    value, through transformers (load_checkpoint) and through nn.Module.load_state_dict, with no mismatch report."""
    from safetensors.torch import load_file, save_file
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as hf_logging

    model = vistog(llava, 16)
    with torch.no_grad():
        model.model.grouping.log_logit_scale.fill_(0.75)
    model.save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    (weights,) = tmp_path.glob("*.safetensors")
    tensors = load_file(weights)
    assert tensors["model.grouping.log_logit_scale"].shape == (1,)
    tensors["model.grouping.log_logit_scale"] = tensors["model.grouping.log_logit_scale"].reshape(())
    save_file(tensors, weights, metadata={"format": "pt"})
    with CaptureLogger(hf_logging.get_logger("transformers.modeling_utils")) as report:
        loaded, _ = load_checkpoint(tmp_path)
    assert "MISMATCH" not in report.out
    assert loaded.model.grouping.log_logit_scale.shape == (1,)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    grouping = vistog(llava, 16).model.grouping
    grouping.load_state_dict(
        {k.removeprefix("model.grouping."): v for k, v in tensors.items() if k.startswith("model.grouping.")}
    )
    assert grouping.log_logit_scale.tolist() == [0.75]


def test_stock_llava_checkpoint_loads_as_vistog_off(tmp_path):
    save_tiny_llava(tmp_path)
    model, processor = load_checkpoint(tmp_path)
    assert model.model.grouping is None and model.num_visual_tokens == 576


@pytest.mark.parametrize("n", [0, -3, 577])
def test_bad_budget(n):
    with pytest.raises(UsageError, match=r"1\.\.576"):
        preset_config("tiny", num_semantic_tokens=n)


def test_unknown_shape_suggests():
    with pytest.raises(UsageError, match="did you mean 'llava-1.5-7b'"):
        preset_config("llava-1.5-7")


def test_image_of_another_size(llava):
    with pytest.raises(UsageError, match=r"\[batch, 3, 336, 336\].*\[1, 3, 224, 224\]"):
        vistog(llava, 16).visual_tokens(torch.zeros(1, 3, 224, 224))


def test_checkpoint_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    save_tiny_llava(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="cannot load weights"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="no \\*.safetensors"):
        load_checkpoint(tmp_path)
