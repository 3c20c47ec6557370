"""LLaVA-1.5 stage 1 from its parts: a tiny LLM folder laid out as lmsys/vicuna-7b-v1.5 and a tiny CLIP folder laid out
as openai/clip-vit-large-patch14-336 compose into stock LlavaForConditionalGeneration (convert_llava_weights_to_hf.py's
recipe); `--recipe llava-1.5-7b-stage1 --llm --vision-tower` trains the projector only, saves a LLaVA folder the
project's loader reads and the adapter serves; folders the trainer cannot read are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_distributed import serve_one_sample

from vistog_bench.testing.hub_checkpoints import VOCAB_SIZE, llama_tokenizer, train_sentencepiece
from vistog_bench.train.cli import run_cli
from vistog_bench.train.compose import compose_llava

# lmsys/vicuna-7b-v1.5 tokenizer_config.json as published (transformers 4.31 era: AddedToken dicts, no pad token,
# right padding); the tiny folder has its tokenizer.model and, since this machine's protobuf cannot read a
# SentencePiece model through transformers' converter (gencode 7.36.1 vs runtime 6.33.6), a tokenizer.json beside it
_TOKEN = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
VICUNA_TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": {**_TOKEN, "content": "<s>"},
    "clean_up_tokenization_spaces": False,
    "eos_token": {**_TOKEN, "content": "</s>"},
    "legacy": False,
    "model_max_length": 4096,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": {**_TOKEN, "content": "<unk>"},
}
VICUNA_SPECIAL_TOKENS_MAP = {
    "bos_token": {k: v for k, v in {**_TOKEN, "content": "<s>"}.items() if k != "__type"},
    "eos_token": {k: v for k, v in {**_TOKEN, "content": "</s>"}.items() if k != "__type"},
    "unk_token": {k: v for k, v in {**_TOKEN, "content": "<unk>"}.items() if k != "__type"},
}
# openai/clip-vit-large-patch14-336 preprocessor_config.json as published (transformers 4.x's CLIPFeatureExtractor)
CLIP_336_PREPROCESSOR_CONFIG = {
    "crop_size": 336,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 336,
}
CAPTIONS = ("a red circle", "a blue square", "a green triangle", "a yellow circle")


def write_vicuna(folder):
    """A tiny LlamaForCausalLM saved by transformers, vicuna-7b-v1.5's config values except the widths
    (bos 1, eos 2, pad 0, 4096 positions, RMS eps 1e-5, SiLU, untied head), with a Llama SentencePiece tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(folder)
    sentencepiece_model = train_sentencepiece()
    (folder / "tokenizer.model").write_bytes(sentencepiece_model)
    llama_tokenizer(sentencepiece_model, llava_tokens=False).backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(VICUNA_TOKENIZER_CONFIG, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(VICUNA_SPECIAL_TOKENS_MAP, indent=2))
    return folder


def write_clip(folder):
    """A tiny CLIPModel saved by transformers (ViT at 336 px / 14 px, as ViT-L/14-336, so 576 patches) with
    openai's preprocessor_config.json."""
    from transformers import CLIPConfig, CLIPModel

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=99)
    torch.manual_seed(2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_336_PREPROCESSOR_CONFIG, indent=2))
    return folder


def write_captions(folder):
    """blip_laion_cc_sbu_558k.json's shape: `<image>` from the human, a caption from gpt."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    records = []
    for i, caption in enumerate(CAPTIONS):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        records.append(
            {
                "id": str(i),
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    (folder / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records))
    return folder / "blip_laion_cc_sbu_558k.json"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return write_vicuna(root / "vicuna-7b-v1.5"), write_clip(root / "clip-vit-large-patch14-336")


def test_composed_llava_is_the_conversion_scripts(parts):
    from transformers import CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM, LlavaForConditionalGeneration

    llm, clip = parts
    model, processor = compose_llava(llm, clip, seed=0)
    assert type(model) is LlavaForConditionalGeneration
    config = model.config
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    # <image> and <pad> right after the LLM's vocabulary (Vicuna: 32000, 32001), rows padded to a multiple of 64
    assert (config.image_token_index, config.pad_token_id) == (VOCAB_SIZE, VOCAB_SIZE + 1)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and VOCAB_SIZE + 2 <= rows < VOCAB_SIZE + 2 + 64 and model.lm_head.weight.shape[0] == rows
    tokenizer = processor.tokenizer
    assert tokenizer("<image>", add_special_tokens=False).input_ids == [VOCAB_SIZE] and tokenizer.pad_token == "<pad>"
    assert isinstance(processor.image_processor, CLIPImageProcessor)
    assert processor.image_processor.crop_size["height"] == 336
    # the parts' weights, untouched; the projector maps CLIP's width to the LLM's
    language = LlamaForCausalLM.from_pretrained(llm, use_safetensors=True).state_dict()
    vision = CLIPVisionModel.from_pretrained(clip, use_safetensors=True).state_dict()
    ours = model.state_dict()
    for name, weight in language.items():  # LlamaForCausalLM's model.* and lm_head.*; the vocabulary's first rows
        mine = name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name
        assert torch.equal(ours[mine][: weight.shape[0]], weight), name
    assert all(torch.equal(ours[f"model.vision_tower.{k}"], v) for k, v in vision.items())
    projector = model.model.multi_modal_projector
    assert projector.linear_1.weight.shape == (64, 32) and projector.linear_2.weight.shape == (64, 64)
    # 576 placeholders per image, as llava-hf's processor expands `<image>` for ViT-L/14-336
    inputs = processor(images=Image.new("RGB", (80, 60)), text="USER: <image>\nhi ASSISTANT:", return_tensors="pt")
    assert int((inputs.input_ids == VOCAB_SIZE).sum()) == 576 and inputs.pixel_values.shape[-2:] == (336, 336)


def test_stage1_from_parts_trains_the_projector_only_saves_and_serves(parts, tmp_path):
    from vistog_bench.model import load_checkpoint

    llm, clip = parts
    data, out = write_captions(tmp_path / "data"), tmp_path / "llava-s1"
    # its own process: accelerate's state is per process, and the recipe's bf16 differs from other tests' precision
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vistog_bench.train",
            "--recipe",
            "llava-1.5-7b-stage1",
            "--llm",
            str(llm),
            "--vision-tower",
            str(clip),
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--num-workers",
            "0",
            "--threads",
            "1",
            "--log-every",
            "1",
            "--quiet",
            "--no-progress",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["steps"] == 2 and np.isfinite(log[-1]["last_loss"])
    saved = load_file(out / "model.safetensors")
    # the recipe's bf16: the frozen LLM and CLIP are stored in it, the trained projector keeps fp32
    assert {w.dtype for k, w in saved.items() if "multi_modal_projector" in k} == {torch.float32}
    assert {w.dtype for k, w in saved.items() if "multi_modal_projector" not in k} == {torch.bfloat16}
    model, processor = load_checkpoint(out)  # the project's loader: a stock LLaVA folder
    trained = model.state_dict()
    initial, _ = compose_llava(llm, clip, seed=0)  # the same seeded start
    start = initial.state_dict()
    projector = [k for k in start if "multi_modal_projector" in k]
    frozen = [k for k in start if "multi_modal_projector" not in k]
    assert all(not torch.equal(trained[k], start[k]) for k in projector)
    assert all(torch.equal(trained[k], start[k].bfloat16().float()) for k in frozen)  # untrained, a bf16 copy
    assert model.config.vision_feature_layer == -2
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == VOCAB_SIZE
    serve_one_sample(out)


def test_unreadable_parts_are_refused_in_one_line(parts, tmp_path, capsys):
    llm, clip = parts
    data = write_captions(tmp_path / "data")
    bin_only = tmp_path / "vicuna-bin"
    shutil.copytree(llm, bin_only)
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model-00001-of-00002.bin")  # the hub repo's layout
    common = ["--stage", "llava", "--data", str(data), "--output-dir", str(tmp_path / "o"), "--quiet", "--no-progress"]
    cases = [
        (["--llm", str(bin_only), "--vision-tower", str(clip)], "has PyTorch .bin weights only"),
        (["--llm", str(llm), "--vision-tower", str(llm)], "expected CLIP"),
        (["--llm", str(llm)], "give --model, or --llm and --vision-tower"),
        (["--model", str(llm), "--llm", str(llm), "--vision-tower", str(clip)], "not both"),
    ]
    for flags, message in cases:
        assert run_cli([*common, *flags]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("vistog-bench train: error:") and message in errors[0], errors
