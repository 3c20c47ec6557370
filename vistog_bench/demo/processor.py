"""A word-level tokenizer and a LLaVA processor for tiny models, saved in the Hugging Face layout.

The tokenizer (the `tokenizers` library) lower-cases, splits on white space, isolates punctuation (`? . , : ; !`) and
keeps hyphenated words whole ("top-left" is one token). Special tokens follow LLaVA / Llama: `<unk>` 0, `<s>` 1,
`</s>` 2, `<pad>` 3, `<image>` 4; every encoded text starts with `<s>`. The image processor is CLIP's at the model's
image size (resize shortest edge + centre crop, CLIP mean / std), as in LLaVA-1.5.
"""

from __future__ import annotations

from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from ..model.prompting import LLAVA_PLAIN_CHAT_TEMPLATE

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[?.,:;!]"), behavior="isolated")]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def tiny_processor(words: list[str], image_size: int, patch_size: int) -> LlavaProcessor:
    """LlavaProcessor = CLIPImageProcessor at `image_size` + the word-level tokenizer over `words`."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    tokenizer = word_tokenizer(words)
    # the conversation format the trainer writes (no system prompt), so evaluation prompts match training
    tokenizer.chat_template = LLAVA_PLAIN_CHAT_TEMPLATE
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )


__all__ = ["SPECIAL_TOKENS", "word_tokenizer", "tiny_processor"]
