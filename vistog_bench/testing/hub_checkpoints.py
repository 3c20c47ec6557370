"""Tiny random-weight checkpoints laid out exactly as llava-hf/llava-1.5-7b-hf is, in its two real layouts:

    python -m vistog_bench.testing.hub_checkpoints OUT_DIR [--families]   # OUT_DIR/hub, resaved, no-template

- `hub`: the files of the hub repo llava-hf/llava-1.5-7b-hf as published (transformers 4.x era):
  `config.json` (LlavaConfig, `image_token_index`, `vision_feature_layer` -2, `vision_feature_select_strategy`
  "default"), `generation_config.json`, sharded `model-0000k-of-00002.safetensors` + `model.safetensors.index.json`
  with the 4.x weight names (`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.*`,
  `multi_modal_projector.*`), `preprocessor_config.json` (CLIPImageProcessor, 336 px), `processor_config.json`
  (`image_token` "<image>", `patch_size` 14, `vision_feature_select_strategy` "default",
  `num_additional_image_tokens` 1), `chat_template.json` (the processor's template; the tokenizer has none),
  `tokenizer.model` (SentencePiece BPE with byte fallback, as Llama's), `tokenizer.json`, `tokenizer_config.json`
  (LlamaTokenizer, `add_bos_token`, `legacy` false, `padding_side` left, `added_tokens_decoder`),
  `special_tokens_map.json` and `added_tokens.json` (`<image>`, `<pad>` after the SentencePiece vocabulary, as
  llava-hf appends 32000 and 32001 to Llama's 32000 pieces).
- `resaved`: that checkpoint loaded and written again by transformers 5 (`save_pretrained` of the model and of
  `AutoProcessor`): one `model.safetensors` (transformers 5 writes back the checkpoint's own weight names),
  `chat_template.jinja` (which the tokenizer then loads too), 5.x `config.json` / `processor_config.json` (the image
  processor's settings inside it, no `preprocessor_config.json`) / `tokenizer_config.json`.

The chat template is copied verbatim from transformers' tests/models/llava/test_processing_llava.py
(`prepare_processor_dict`, "must match processor_config.json from the Hub repo"), which is the hub repo's
`chat_template.json`. Widths are tiny (`model.presets` "tiny": 336 px / 14 px, so 576 patches; 3 LLM layers); the
vocabulary is a SentencePiece model trained here on a few hundred sentences, since the real one cannot be downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

# transformers tests/models/llava/test_processing_llava.py, LlavaProcessorTest.prepare_processor_dict (verbatim):
# llava-hf/llava-1.5-7b-hf's chat_template.json.
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-1.5-7b-hf preprocessor_config.json (CLIP ViT-L/14-336's image processor).
PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
# llava-hf/llava-1.5-7b-hf processor_config.json.
PROCESSOR_CONFIG = {
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "processor_class": "LlavaProcessor",
    "vision_feature_select_strategy": "default",
}
SPECIAL = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}  # Llama's ids 0, 1, 2
ADDED = ("<image>", "<pad>")  # appended after the SentencePiece vocabulary, as llava-hf does
VOCAB_SIZE = 384  # SentencePiece pieces (Llama: 32000)
PADDED_VOCAB = 448  # the embedding rows, a multiple of 64 as llava-hf's 32064
TEXT_LAYERS = 3  # LLM layers: FastV's default K = 2 needs a layer after it (Vicuna-7B: 32)

# Text the tiny SentencePiece model is trained on: LLaVA's turn words, the questions tests and tasks ask.
_CORPUS = (
    "USER: ASSISTANT: A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. What is shown in this image? What colour is the "
    "shape? What color is the circle? How many shapes are there? Is there a red circle in the picture? Answer the "
    "question using a single word or phrase. Please carefully observe the image and come up with a caption for the "
    "image. Describe the video. Which way does the square move? Answer with the option's letter from the given "
    "choices directly. yes no one two three four red green blue yellow square triangle left right top bottom centre"
)


def train_sentencepiece() -> bytes:
    """A Llama-style SentencePiece model (BPE, byte fallback, `<unk>` `<s>` `</s>` = 0 1 2), trained on _CORPUS."""
    import sentencepiece as spm

    sentences = [s.strip() + "." for s in _CORPUS.split(".") if s.strip()]
    words = _CORPUS.split()
    sentences += [" ".join(words[i : i + 6]) for i in range(len(words))]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 8),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def llama_tokenizer(sentencepiece_model: bytes, llava_tokens: bool = True):
    """transformers' LlamaTokenizer over the SentencePiece model's pieces, merges derived from the vocabulary as
    transformers' own SentencePiece conversion derives them; `<image>` and `<pad>` appended as llava-hf does
    (`llava_tokens`; without them: the LLM's own tokenizer, as lmsys/vicuna-7b-v1.5's)."""
    import sentencepiece as spm
    from transformers import AddedToken, LlamaTokenizer

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = sorted(
        (
            (piece[:k], piece[k:])
            for piece in vocab
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ),
        key=lambda pair: (vocab[pair[0] + pair[1]], vocab[pair[0]], vocab[pair[1]]),
    )
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=SPECIAL["unk"],
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        padding_side="left",
    )
    if llava_tokens:
        tokenizer.add_tokens([AddedToken(ADDED[0], special=True, normalized=False)], special_tokens=True)
        tokenizer.add_special_tokens({"pad_token": ADDED[1]})
    return tokenizer


def _hub_tokenizer_config(tokenizer) -> dict:
    """llava-hf/llava-1.5-7b-hf tokenizer_config.json, ids of this vocabulary."""
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": t not in ADDED,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in [(SPECIAL["unk"], 0), (SPECIAL["bos"], 1), (SPECIAL["eos"], 2)]
        + [(t, tokenizer.convert_tokens_to_ids(t)) for t in ADDED]
    }
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": SPECIAL["bos"],
        "clean_up_tokenization_spaces": False,
        "eos_token": SPECIAL["eos"],
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": ADDED[1],
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": SPECIAL["unk"],
        "use_default_system_prompt": False,
    }


def _hub_config(tokenizer, text_config: dict, vision_config: dict) -> dict:
    """llava-hf/llava-1.5-7b-hf config.json (4.x keys), tiny widths."""
    image_id, pad_id = tokenizer.convert_tokens_to_ids(list(ADDED))
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": image_id,
        "model_type": "llava",
        "pad_token_id": pad_id,
        "projector_hidden_act": "gelu",
        "text_config": {
            **text_config,
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": PADDED_VOCAB,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {**vision_config, "model_type": "clip_vision_model", "projection_dim": 768},
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": PADDED_VOCAB,
    }


# transformers 5 weight names -> the 4.x names llava-hf's safetensors carry.
_HUB_NAMES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def _hub_name(name: str) -> str:
    for new, old in _HUB_NAMES:
        if name.startswith(new):
            return old + name[len(new) :]
    raise ValueError(f"unexpected LLaVA weight {name}")


def _write_sharded(state: dict, out: Path, shards: int = 2) -> None:
    """`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`, as the hub repo shards its weights."""
    from safetensors.torch import save_file

    names = sorted(state)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[k * per_shard : (k + 1) * per_shard]}
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_hub_layout(out: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight llava-hf/llava-1.5-7b-hf in the hub repo's layout (see the module docstring)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from ..model.presets import PRESETS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sentencepiece_model = train_sentencepiece()
    tokenizer = llama_tokenizer(sentencepiece_model)
    tiny = PRESETS["tiny"]
    text = {k: v for k, v in tiny["text_config"].items() if k not in ("pad_token_id", "bos_token_id", "eos_token_id")}
    text["num_hidden_layers"] = TEXT_LAYERS
    config = _hub_config(tokenizer, text, tiny["vision_config"])
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(**config)).eval()
    _write_sharded({_hub_name(n): t.to(torch.float16) for n, t in model.state_dict().items()}, out)  # as published
    _dump(out / "config.json", config)
    _dump(
        out / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": config["pad_token_id"],
            "transformers_version": "4.36.0.dev0",
        },
    )
    _dump(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _dump(out / "processor_config.json", PROCESSOR_CONFIG)
    _dump(out / "chat_template.json", {"chat_template": LLAVA_HF_CHAT_TEMPLATE})
    (out / "tokenizer.model").write_bytes(sentencepiece_model)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    _dump(out / "tokenizer_config.json", _hub_tokenizer_config(tokenizer))
    _dump(
        out / "special_tokens_map.json",
        {
            "bos_token": {
                "content": "<s>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
            "eos_token": {
                "content": "</s>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
            "pad_token": "<pad>",
            "unk_token": {
                "content": "<unk>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
        },
    )
    _dump(out / "added_tokens.json", {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED})
    return out


def write_resaved_layout(hub_dir: str | Path, out: str | Path) -> Path:
    """The hub-layout checkpoint as transformers 5 writes it back: `from_pretrained` + `save_pretrained`."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = Path(out)
    model = LlavaForConditionalGeneration.from_pretrained(hub_dir, use_safetensors=True)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(hub_dir, trust_remote_code=False).save_pretrained(out)
    return out


def write_layouts(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """OUT/hub, OUT/resaved and OUT/no-template (the hub layout without chat_template.json, as llava-hf checkpoints
    were before chat templates: lmms-eval's llava_hf then uses LLaVA-1.5's vicuna_v1 conversation)."""
    import shutil

    root = Path(out_dir)
    hub = write_hub_layout(root / "hub", seed)
    bare = root / "no-template"
    shutil.copytree(hub, bare)
    (bare / "chat_template.json").unlink()
    return {"hub": hub, "resaved": write_resaved_layout(hub, root / "resaved"), "no-template": bare}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vistog_bench.testing.hub_checkpoints", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", help="folder that receives hub/, resaved/ and no-template/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--families",
        action="store_true",
        help="also llava-next/, llava-onevision/ and qwen2.5-vl/ (hub_checkpoints_families)",
    )
    args = parser.parse_args(argv)
    written = write_layouts(args.out_dir, args.seed)
    if args.families:
        from .hub_checkpoints_families import write_family_layouts

        written.update(write_family_layouts(args.out_dir, args.seed))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
