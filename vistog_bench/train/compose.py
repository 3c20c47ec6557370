"""LLaVA-1.5 from its parts, as its stage 1 starts: an LLM folder (lmsys/vicuna-7b-v1.5, LlamaForCausalLM), a CLIP
folder (openai/clip-vit-large-patch14-336, CLIPModel) and a fresh two-layer MLP projector (LLaVA's `mlp2x_gelu`),
composed into transformers' stock LlavaForConditionalGeneration + LlavaProcessor, which the trainer then trains and
saves as a normal Hugging Face LLaVA folder.

What is taken from where:
- transformers' `models/llava/convert_llava_weights_to_hf.py` (the script that made llava-hf/llava-1.5-7b-hf from
  these two repos): the tokenizer of the LLM folder plus `<image>` (an AddedToken, special, not normalized) and a
  `<pad>` pad token, the image processor of the CLIP folder, LlavaProcessor over both, LlavaConfig over the LLM's
  config and CLIP's vision config, the embeddings resized to the new vocabulary padded to a multiple of 64 (Vicuna's
  32000 -> 32064; the new rows drawn around the old embeddings' mean, as the script and transformers'
  `resize_token_embeddings(mean_resizing=True)` do).
- LlavaConfig's defaults are LLaVA-1.5's: `vision_feature_layer` -2 (LLaVA's `--mm_vision_select_layer -2`),
  `vision_feature_select_strategy` "default" (CLS dropped), `projector_hidden_act` "gelu" with two biased linears
  (`--mm_projector_type mlp2x_gelu`); they are written out here so the composition does not depend on them.
- The projector: `nn.Linear` layers at torch's own initialisation, as LLaVA's `build_vision_projector`
  (llava/model/multimodal_projector/builder.py) creates them.
- llava-hf/llava-1.5-7b-hf's processor_config.json (`patch_size` 14, `num_additional_image_tokens` 1,
  `vision_feature_select_strategy` "default"), generation_config.json (bos, eos, pad = `<pad>`) and tokenizer
  `padding_side` "left".

The LLM and CLIP weights are read as safetensors only (lmsys/vicuna-7b-v1.5 publishes PyTorch `.bin` shards: save
them once as safetensors with transformers); no code shipped with either folder runs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..model.geometry import num_patches

IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"  # convert_llava_weights_to_hf.py
VOCAB_MULTIPLE = 64  # convert_llava_weights_to_hf.py: `pad_shape = 64`
VISION_FEATURE_LAYER = -2  # LLaVA-1.5 `--mm_vision_select_layer -2`
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")  # a CLIPModel folder (openai's) or a CLIPVisionModel one


def compose_llava(llm: str | Path, vision_tower: str | Path, *, dtype: str = "float32", seed: int = 0):
    """(LlavaForConditionalGeneration, LlavaProcessor): the LLM and CLIP folders' weights, a projector initialised
    from `seed`; every parameter trainable (the stage chooses what trains)."""
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        CLIPVisionModel,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from ..dtypes import torch_dtype
    from ..model.loading import load_config, load_pretrained, load_processor

    _check_weights(llm, "--llm")
    _check_weights(vision_tower, "--vision-tower")
    clip = load_config(vision_tower)  # remote code refused
    if clip.model_type not in CLIP_MODEL_TYPES:
        raise UsageError(
            f"--vision-tower {vision_tower} holds a {clip.model_type!r} model; expected CLIP "
            f"({', '.join(CLIP_MODEL_TYPES)})"
        )
    tokenizer = _tokenizer_with_image_token(llm)
    image_processor = load_processor(vision_tower, AutoImageProcessor)
    weights_dtype = torch_dtype(dtype)
    language = load_pretrained(AutoModelForCausalLM, llm, dtype=weights_dtype)
    vision = load_pretrained(CLIPVisionModel, vision_tower, dtype=weights_dtype)  # CLIPModel folder: its vision half
    patches = num_patches(vision.config)
    config = LlavaConfig(
        text_config=language.config,
        vision_config=vision.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_seq_length=patches,
        tie_word_embeddings=language.config.tie_word_embeddings,
    )
    with torch.device("meta"):  # the skeleton only: its parts are the loaded models and the new projector
        model = LlavaForConditionalGeneration(config)
    model.model.language_model, model.lm_head = language.model, language.lm_head
    model.model.vision_tower = vision
    torch.manual_seed(seed)
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(weights_dtype)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=VOCAB_MULTIPLE)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise UsageError(f"composing LLaVA left {len(left)} tensors unset, first {left[0]}")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
    )
    return model.requires_grad_(True), processor


def _check_weights(path: str | Path, flag: str) -> None:
    """One line for a folder without safetensors weights (the Vicuna repo's `.bin` shards among them)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UsageError(f"{flag} {path} is not a Hugging Face folder: config.json is missing")
    if not any(path.glob("*.safetensors")):
        found = "PyTorch .bin weights only" if any(path.glob("*.bin")) else "no weights"
        raise UsageError(
            f"{flag} {path} has {found}; vistog-bench reads safetensors only (save the model once "
            "with transformers' save_pretrained to convert it)"
        )


def _tokenizer_with_image_token(llm: str | Path):
    """The LLM folder's tokenizer + `<image>` (+ `<pad>` when it has no pad token, as Vicuna's has none)."""
    from transformers import AddedToken

    from ..model.loading import load_processor

    tokenizer = load_processor(llm)  # a folder with a tokenizer only: AutoProcessor gives the tokenizer
    if not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise UsageError(f"--llm {llm}: expected a tokenizer, got {type(tokenizer).__name__}")
    if IMAGE_TOKEN in tokenizer.get_vocab():
        raise UsageError(f"--llm {llm}: its tokenizer already has {IMAGE_TOKEN}; give the LLM's own folder")
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"
    return tokenizer
