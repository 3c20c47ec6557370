"""Tiny random-weight checkpoints of LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL in their hub repos' layouts:

    python -m vistog_bench.testing.hub_checkpoints OUT_DIR --families
    # + OUT_DIR/llava-next, llava-onevision, qwen2.5-vl

Each folder holds the files its hub repo publishes, with the published keys and geometry (image sizes, patch sizes,
tile grids, pixel limits) and tiny widths (hidden 32 / 64, 2-3 layers):

- `llava-next` as llava-hf/llava-v1.6-mistral-7b-hf: `config.json` (LlavaNextConfig, 4.x keys, `image_grid_pinpoints`
  of the 1.6 release, `vision_feature_layer` -2, CLIP 336 px / 14 px, a Mistral LLM), `preprocessor_config.json`
  (LlavaNextImageProcessor, anyres), `processor_config.json`, `chat_template.json` (the Mistral `[INST]` template),
  a Llama SentencePiece tokenizer with `<image>` = 32000-style id after the pieces; 4.x weight names
  (`language_model.model.*`, `vision_tower.*`, `multi_modal_projector.*`, `image_newline`), sharded.
- `llava-onevision` as llava-hf/llava-onevision-qwen2-7b-ov-hf: `config.json` (LlavaOnevisionConfig, SigLIP 384 px /
  14 px, 729 patches, `anyres_max_9`, the 36 pinpoints 384..2304, `vision_feature_select_strategy` "full",
  `vision_feature_layer` -1, a Qwen2 LLM), `preprocessor_config.json` (LlavaOnevisionImageProcessor, mean / std
  0.5), `processor_config.json` (`num_image_tokens` 729), `chat_template.json`, a byte-level BPE Qwen2 tokenizer
  with `<image>` / `<video>` after Qwen's specials.
- `qwen2.5-vl` as Qwen/Qwen2.5-VL-7B-Instruct: `config.json` (4.49 layout: text keys at the top level, `rope_scaling`
  mrope with a section scaled to the tiny head width, `vision_config` with `window_size` 112,
  `fullatt_block_indexes`, `spatial_merge_size` 2), `preprocessor_config.json` (Qwen2VLImageProcessor, min / max
  pixels as published), `chat_template.json`, a byte-level BPE Qwen2 tokenizer with Qwen's special tokens; weight
  names `model.*` (LLM), `visual.*`, `lm_head.*`.

Sources of the copied text (verbatim):
- OneVision's template: transformers tests/models/llava_onevision/test_processing_llava_onevision.py
  (`prepare_processor_dict`), which is llava-hf/llava-onevision-qwen2-7b-ov-hf's `chat_template.json`.
- NeXT-Mistral's template: llava-hf/llava-v1.6-mistral-7b-hf `chat_template.json`, as openvino.genai's
  src/cpp/src/tokenizer.cpp quotes it ("tiny-random-llava-next, llava-v1.6-mistral (chat_template.json)"), including
  the published `'<\\\\s> '` end of an assistant turn. (transformers' test_processing_llava_next.py uses LLaVA-1.5's
  template, not the Mistral release's.)
- Qwen2.5-VL's template: Qwen/Qwen2-VL-*-Instruct's, quoted in the same openvino.genai file; Qwen/Qwen2.5-VL-7B-
  Instruct publishes the same string (its `official_chat_template` as a processor dump of revision cc594898 prints it).
- Configs and processor configs: the hub repos' files as transformers' processors and published dumps print them;
  widths, depths and vocabularies are tiny, everything that fixes a visual-token count is as published.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model.presets import PRESETS
from .hub_checkpoints import _CORPUS, _dump, _write_sharded, llama_tokenizer, train_sentencepiece

# llava-hf/llava-onevision-qwen2-7b-ov-hf chat_template.json (transformers tests/models/llava_onevision/
# test_processing_llava_onevision.py, prepare_processor_dict, verbatim).
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf chat_template.json (openvino.genai src/cpp/src/tokenizer.cpp, verbatim).
NEXT_MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '<\\\\s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Qwen/Qwen2.5-VL-7B-Instruct chat_template.json (= Qwen2-VL-Instruct's; openvino.genai src/cpp/src/tokenizer.cpp).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # LLaVA-1.6's anyres grids
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]  # 384..2304, anyres_max_9

NEXT_PREPROCESSOR = {
    "aspect_ratio_setting": "anyres",
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": NEXT_PINPOINTS,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "LlavaNextImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "LlavaNextProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
NEXT_PROCESSOR = {
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "processor_class": "LlavaNextProcessor",
    "vision_feature_select_strategy": "default",
}
ONEVISION_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": ONEVISION_PINPOINTS,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}
ONEVISION_PROCESSOR = {
    "image_token": "<image>",
    "num_image_tokens": 729,
    "processor_class": "LlavaOnevisionProcessor",
    "video_token": "<video>",
    "vision_feature_select_strategy": "full",
}
QWEN_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

# Qwen2's special tokens in their published order (ids 151643.. in the real vocabulary, after the BPE pieces here).
QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
ONEVISION_ADDED = ("<image>", "<video>")  # llava-hf appends them after Qwen2's specials (151646, 151647)
BPE_VOCAB = 512
_EXTRA_CORPUS = " [INST] [/INST] system user assistant You are a helpful assistant."

# the tiny LLaVA-1.5 preset's CLIP tower (model/presets.py), without what each layout below sets itself
_SET_PER_LAYOUT = ("model_type", "projection_dim")
TINY_VISION_CLIP = {k: v for k, v in PRESETS["tiny"]["vision_config"].items() if k not in _SET_PER_LAYOUT}
TINY_VISION_SIGLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=384,
    patch_size=14,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=False,
)
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
)


def byte_level_bpe(special: tuple[str, ...]):
    """transformers' Qwen2Tokenizer over a byte-level BPE trained here on the harness's corpus; `special` appended
    after the pieces as added special tokens (as Qwen2's 151643.. follow its 151643 pieces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    corpus = _CORPUS + _EXTRA_CORPUS
    sentences = [s.strip() + "." for s in corpus.split(".") if s.strip()] * 4
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(sentences, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special], special_tokens=True)
    tokenizer.padding_side = "left"
    return tokenizer


def _rename(state: dict, names: tuple[tuple[str, str], ...]) -> dict:
    """transformers-5 weight names -> the hub repo's (first matching prefix)."""
    out = {}
    for name, tensor in state.items():
        for new, old in names:
            if name.startswith(new):
                out[old + name[len(new) :]] = tensor
                break
        else:
            raise ValueError(f"unexpected weight {name}")
    return out


# transformers 5 -> llava-hf's 4.x names (LLaVA-NeXT and OneVision alike).
LLAVA_HUB_NAMES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
)
# transformers 5 -> Qwen/Qwen2.5-VL-7B-Instruct's names.
QWEN_HUB_NAMES = (("model.language_model.", "model."), ("model.visual.", "visual."), ("lm_head.", "lm_head."))


def _padded(n: int) -> int:
    return -(-n // 64) * 64


def _write_tokenizer(tokenizer, out: Path, extra_config: dict) -> None:
    tokenizer.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.update(extra_config)
    _dump(out / "tokenizer_config.json", config)
    (out / "chat_template.jinja").unlink(missing_ok=True)


def _save(model, out: Path, names, config: dict) -> None:
    import torch

    _write_sharded(_rename({n: t.to(torch.bfloat16) for n, t in model.state_dict().items()}, names), out)
    _dump(out / "config.json", config)


def write_llava_next(out: str | Path, seed: int = 0) -> Path:
    """Tiny llava-hf/llava-v1.6-mistral-7b-hf."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sentencepiece_model = train_sentencepiece()
    tokenizer = llama_tokenizer(sentencepiece_model)
    image_id, pad_id = tokenizer.convert_tokens_to_ids(["<image>", "<pad>"])
    vocab = _padded(len(tokenizer))
    config = {
        "architectures": ["LlavaNextForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": NEXT_PINPOINTS,
        "image_token_index": image_id,
        "model_type": "llava_next",
        "pad_token_id": pad_id,
        "projector_hidden_act": "gelu",
        "text_config": {
            **TINY_TEXT,
            "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
            "architectures": ["MistralForCausalLM"],
            "max_position_embeddings": 32768,
            "model_type": "mistral",
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "torch_dtype": "bfloat16",
            "vocab_size": vocab,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.39.0.dev0",
        "use_image_newline_parameter": True,
        "vision_config": {
            **TINY_VISION_CLIP,
            "model_type": "clip_vision_model",
            "projection_dim": 768,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
    }
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(LlavaNextConfig(**config)).eval()
    _save(model, out, LLAVA_HUB_NAMES, config)
    _dump(
        out / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": pad_id,
            "transformers_version": "4.39.0.dev0",
        },
    )
    _dump(out / "preprocessor_config.json", NEXT_PREPROCESSOR)
    _dump(out / "processor_config.json", NEXT_PROCESSOR)
    _dump(out / "chat_template.json", {"chat_template": NEXT_MISTRAL_CHAT_TEMPLATE})
    (out / "tokenizer.model").write_bytes(sentencepiece_model)
    _write_tokenizer(tokenizer, out, {"processor_class": "LlavaNextProcessor", "tokenizer_class": "LlamaTokenizer"})
    return out


def write_llava_onevision(out: str | Path, seed: int = 0) -> Path:
    """Tiny llava-hf/llava-onevision-qwen2-7b-ov-hf."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_bpe(QWEN_SPECIAL[:3] + ONEVISION_ADDED)
    image_id, video_id = tokenizer.convert_tokens_to_ids(list(ONEVISION_ADDED))
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    vocab = _padded(len(tokenizer))
    config = {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": ONEVISION_PINPOINTS,
        "image_token_index": image_id,
        "model_type": "llava_onevision",
        "multimodal_projector_bias": True,
        "projector_hidden_act": "gelu",
        "text_config": {
            **TINY_TEXT,
            "_name_or_path": "Qwen/Qwen2-7B-Instruct",
            "architectures": ["Qwen2ForCausalLM"],
            "bos_token_id": pad_id,
            "eos_token_id": eos_id,
            "max_position_embeddings": 32768,
            "model_type": "qwen2",
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 131072,
            "torch_dtype": "bfloat16",
            "use_sliding_window": False,
            "vocab_size": vocab,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.45.0.dev0",
        "use_image_newline_parameter": True,
        "video_token_index": video_id,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": {**TINY_VISION_SIGLIP, "model_type": "siglip_vision_model"},
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**config)).eval()
    _save(model, out, LLAVA_HUB_NAMES, config)
    _dump(
        out / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": pad_id,
            "eos_token_id": eos_id,
            "transformers_version": "4.45.0.dev0",
        },
    )
    _dump(out / "preprocessor_config.json", ONEVISION_PREPROCESSOR)
    _dump(out / "processor_config.json", ONEVISION_PROCESSOR)
    _dump(out / "chat_template.json", {"chat_template": ONEVISION_CHAT_TEMPLATE})
    _write_tokenizer(
        tokenizer, out, {"processor_class": "LlavaOnevisionProcessor", "tokenizer_class": "Qwen2Tokenizer"}
    )
    return out


def write_qwen2_5_vl(out: str | Path, seed: int = 0) -> Path:
    """Tiny Qwen/Qwen2.5-VL-7B-Instruct."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_bpe(QWEN_SPECIAL)
    ids = dict(zip(QWEN_SPECIAL, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL)), strict=True))
    vocab = _padded(len(tokenizer))
    head_dim = TINY_TEXT["hidden_size"] // TINY_TEXT["num_attention_heads"]
    section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]  # published [16, 24, 24] for head width 128
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        **TINY_TEXT,
        "max_position_embeddings": 128000,
        "max_window_layers": 28,
        "model_type": "qwen2_5_vl",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 4,
            "hidden_act": "silu",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "in_chans": 3,
            "out_hidden_size": TINY_TEXT["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [1, 3],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "vocab_size": vocab,
    }
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config)).eval()
    _save(model, out, QWEN_HUB_NAMES, config)
    _dump(
        out / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "do_sample": False,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "transformers_version": "4.49.0",
        },
    )
    _dump(out / "preprocessor_config.json", QWEN_PREPROCESSOR)
    _dump(out / "chat_template.json", {"chat_template": QWEN2_5_VL_CHAT_TEMPLATE})
    _write_tokenizer(tokenizer, out, {"tokenizer_class": "Qwen2Tokenizer"})
    return out


WRITERS = {"llava-next": write_llava_next, "llava-onevision": write_llava_onevision, "qwen2.5-vl": write_qwen2_5_vl}


def write_family_layouts(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    root = Path(out_dir)
    return {name: write(root / name, seed) for name, write in WRITERS.items()}
