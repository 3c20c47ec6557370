"""LLaVA prompts from a checkpoint's chat template: one builder for evaluation (the adapter) and for training.

A user meets three kinds of checkpoint:

- **structured template**: llava-hf's processor template (`chat_template.json` in the hub layout of
  llava-hf/llava-1.5-7b-hf, `chat_template.jinja` once transformers 5 re-saved it, and then the tokenizer loads it
  too). It renders `content` as a list of parts, images first: `[{"type": "image"}, {"type": "text", "text": q}]`
  gives `USER: <image>\\n{q} ASSISTANT:`. A plain-string `content` renders `USER:  ASSISTANT:`.
- **string template**: a template that prints `message['content']` as text (the embedded tiny models' LLaVA turns).
  Placeholders go before the text, space-separated, then a newline, as lmms-eval's `llava_hf` puts them.
- **no template**: LLaVA-1.5's vicuna_v1 conversation, exactly as lmms-eval's `llava_hf` falls back to it
  (`VICUNA_CHAT_TEMPLATE` in lmms_eval/models/simple/llava_hf.py, copied below), system prompt included.

A turn may also carry videos (OneVision, Qwen2.5-VL: `model.families`): structured templates get `{"type": "video"}`
parts after the image parts (OneVision's template renders images, then videos, then text; Qwen2.5-VL's renders parts
in order), string templates the processor's video token after the image placeholders, as lmms-eval's `llava_hf`
writes `<video>\n{context}`.

`--chat-template FILE` (or the `chat_template` model arg) overrides the checkpoint's template; FILE is a Jinja
template or a `chat_template.json` (`{"chat_template": ...}`). Which kind a template is gets decided once, by
rendering a probe question with one image both ways; a template that renders neither with the question and exactly
one placeholder is refused, naming where it came from. Every prompt is checked the same way: a rendered prompt that
lost the task's text or its image placeholders is an error, never a silent empty prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

IMAGE_TOKEN = "<image>"

# lmms-eval 0.7.3, lmms_eval/models/simple/llava_hf.py `VICUNA_CHAT_TEMPLATE` (LLaVA-1.5's vicuna_v1 conversation):
# what lmms-eval's llava_hf uses for a checkpoint without a chat template.
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an artificial "
    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {{ message['content'] }} {% elif message['role'] == 'user' %}USER: {{ message['content'] }} {% else %} "
    "ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
VICUNA_SOURCE = "default: LLaVA-1.5 vicuna_v1 (lmms-eval llava_hf's VICUNA_CHAT_TEMPLATE)"

# LLaVA-1.5's turns without a system prompt: `USER: <image>\n{q} ASSISTANT: {a}</s>`. The embedded tiny models were
# trained with it and carry it as their template.
LLAVA_PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

STRUCTURED, STRING = "structured", "string"
_PROBE = "Which colour is the probe square?"


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template, where it came from (a file, or the default) and how it wants `content`."""

    text: str
    source: str
    style: str  # STRUCTURED | STRING


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    text: str
    images: int = 0  # image placeholders this turn needs (user turns)
    videos: int = 0  # video placeholders (after the images), for a family with a video path


def read_template_file(path: str | Path) -> str:
    """A template file: raw Jinja, or JSON with a `chat_template` key (the hub's `chat_template.json`)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"chat template file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON: {exc}") from None
        template = data.get("chat_template") if isinstance(data, dict) else None
        if not isinstance(template, str) or not template.strip():
            raise UsageError(f'{path} has no "chat_template" string')
        return template
    if not text.strip():
        raise UsageError(f"chat template file {path} is empty")
    return text


def _own_template(obj) -> str | None:
    template = getattr(obj, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _checkpoint_file(checkpoint: Path | None, *names: str) -> str:
    """The first of `names` present in the checkpoint folder, for naming a template's source."""
    for name in names:
        if checkpoint is not None and (checkpoint / name).is_file():
            return str(checkpoint / name)
    return f"{checkpoint or 'the checkpoint'} ({names[-1]})"


def find_template(processor, checkpoint: str | Path | None = None, override: str | Path | None = None) -> ChatTemplate:
    """The template prompts are built with: `override` (a file), else the processor's (chat_template.json or
    chat_template.jinja), else the tokenizer's (tokenizer_config.json), else LLaVA-1.5's vicuna_v1 default."""
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if override:
        text, source = read_template_file(override), f"--chat-template {override}"
    elif _own_template(processor):
        text = _own_template(processor)
        source = _checkpoint_file(checkpoint, "chat_template.json", "chat_template.jinja", "processor_config.json")
    elif _own_template(processor.tokenizer):
        text = _own_template(processor.tokenizer)
        source = _checkpoint_file(checkpoint, "chat_template.jinja", "tokenizer_config.json")
    else:
        text, source = VICUNA_CHAT_TEMPLATE, VICUNA_SOURCE
    return ChatTemplate(text, source, _style(text, source, processor.tokenizer, image_token_of(processor)))


def image_token_of(processor) -> str:
    return getattr(processor, "image_token", None) or IMAGE_TOKEN


def video_token_of(processor) -> str | None:
    """The processor's video placeholder (`<video>`, `<|video_pad|>`), None for a processor without videos."""
    return getattr(processor, "video_token", None)


def _apply(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _style(template: str, source: str, tokenizer, image_token: str) -> str:
    """STRUCTURED if the template renders content parts with the text and one placeholder, else STRING if it
    renders a string content so; refused otherwise."""
    attempts = {
        STRUCTURED: [{"type": "image"}, {"type": "text", "text": _PROBE}],
        STRING: f"{image_token}\n{_PROBE}",
    }
    rendered = {}
    for style, content in attempts.items():
        try:
            text = _apply(tokenizer, template, [{"role": "user", "content": content}], True)
        except Exception as exc:  # noqa: BLE001 - a template that fails on one content kind may take the other
            rendered[style] = f"{type(exc).__name__}: {exc}"
            continue
        if _PROBE in text and text.count(image_token) == 1 and "'type'" not in text:
            return style
        rendered[style] = text
    raise UsageError(
        f"the chat template from {source} renders neither content parts nor a string with the question and one "
        f"{image_token} (structured: {rendered[STRUCTURED]!r}; string: {rendered[STRING]!r})"
    )


def split_placeholders(text: str, image_token: str = IMAGE_TOKEN) -> tuple[int, str]:
    """(placeholders in `text`, `text` without them): LLaVA data writes `<image>\\n{q}` (or `{q}\\n<image>`)."""
    count = text.count(image_token)
    if count:
        text = text.replace(image_token + "\n", "").replace("\n" + image_token, "").replace(image_token, "")
    return count, text.strip() if count else text


class PromptBuilder:
    """Renders conversations with one ChatTemplate; `generation_prompt` is what evaluation feeds the model and
    `training_rounds` what training feeds it, so a checkpoint is evaluated with the prompt it was trained with."""

    def __init__(
        self, template: ChatTemplate, tokenizer, image_token: str = IMAGE_TOKEN, video_token: str | None = None
    ) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.video_token = video_token

    def _message(self, turn: Turn) -> dict:
        if turn.role != "user":
            content = turn.text
            if self.template.style == STRUCTURED:
                content = [{"type": "text", "text": turn.text}]
            return {"role": turn.role, "content": content}
        written, text = split_placeholders(turn.text, self.image_token)
        if turn.videos and self.video_token is None:
            raise UsageError("a video placeholder needs a processor with a video token (OneVision, Qwen2.5-VL)")
        if self.template.style == STRUCTURED:  # images first, as llava-hf's template renders them
            parts = [{"type": "image"} for _ in range(max(turn.images, written))]
            parts += [{"type": "video"} for _ in range(turn.videos)]
            return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}
        placeholders = [self.image_token] * (turn.images if not written else 0) + [self.video_token] * turn.videos
        if placeholders:  # before the text, as lmms-eval's llava_hf puts them
            return {"role": "user", "content": " ".join(placeholders) + "\n" + turn.text}
        return {"role": "user", "content": turn.text}

    def render(self, turns: Sequence[Turn], add_generation_prompt: bool) -> str:
        return _apply(self.tokenizer, self.template.text, [self._message(t) for t in turns], add_generation_prompt)

    def _check(self, prompt: str, turns: Sequence[Turn]) -> None:
        images = sum(max(t.images, split_placeholders(t.text, self.image_token)[0]) for t in turns if t.role == "user")
        lost = [t.text for t in turns if split_placeholders(t.text, self.image_token)[1] not in prompt]
        if lost:
            raise UsageError(f"the chat template from {self.template.source} lost the text {lost[0]!r}: {prompt!r}")
        if prompt.count(self.image_token) != images:
            raise UsageError(
                f"the chat template from {self.template.source} rendered {prompt.count(self.image_token)} "
                f"{self.image_token} placeholders for {images} images: {prompt!r}"
            )
        videos = sum(t.videos for t in turns if t.role == "user")
        if videos and prompt.count(self.video_token) != videos:
            raise UsageError(
                f"the chat template from {self.template.source} rendered {prompt.count(self.video_token)} "
                f"{self.video_token} placeholders for {videos} videos: {prompt!r}"
            )

    def generation_prompt(self, turns: Sequence[Turn]) -> str:
        """The conversation `turns` (one user turn for a single-turn task) ready for the assistant's answer."""
        prompt = self.render(turns, add_generation_prompt=True)
        self._check(prompt, turns)
        return prompt

    def training_rounds(self, turns: Sequence[Turn]) -> list[tuple[str, str]]:
        """(prompt text, answer text) per user/assistant round. Round 0's prompt is `generation_prompt` of the first
        user turn; a later round's prompt is the template's text between the previous turns and the next generation
        prompt. The trainer appends each answer and an end-of-sequence token itself (LLaVA's training target)."""
        if (
            len(turns) < 2
            or len(turns) % 2
            or any(t.role != r for t, r in zip(turns, ("user", "assistant") * len(turns), strict=False))
        ):
            raise UsageError("a training conversation alternates user / assistant turns, user first")
        rounds, history, consumed = [], [], ""
        for user, assistant in zip(turns[0::2], turns[1::2], strict=True):
            prompt = self.render([*history, user], add_generation_prompt=True)
            if not prompt.startswith(consumed):
                raise UsageError(
                    f"the chat template from {self.template.source} renders a conversation's earlier turns "
                    "differently once a turn follows; it cannot be used for multi-turn training"
                )
            rounds.append((prompt[len(consumed) :], assistant.text))
            history += [user, assistant]
            consumed = self.render(history, add_generation_prompt=False)
        self._check("".join(p for p, _ in rounds), [t for t in turns if t.role == "user"])
        return rounds


__all__ = [
    "IMAGE_TOKEN",
    "VICUNA_CHAT_TEMPLATE",
    "LLAVA_PLAIN_CHAT_TEMPLATE",
    "ChatTemplate",
    "Turn",
    "PromptBuilder",
    "find_template",
    "read_template_file",
    "split_placeholders",
    "image_token_of",
    "video_token_of",
]
