"""The lmms-eval model `vistog`: LLaVA-1.5 / VisToG / training-free reducers at a visual-token budget.

    python -m lmms_eval eval --model vistog \
        --model_args pretrained=/ckpt/llava-vistog-64,budget=64,method=vistog,device=cuda,dtype=float16,batch_size=8 \
        --tasks gqa --include_path tasks

A thin adapter in the manner of lmms-eval's `models/simple/llava_hf.py`: it turns requests into LLaVA-1.5 prompts
(the same chat template rule as `llava_hf`, so answers match it at `method=none, budget=576`), expands each image
placeholder to the budget, batches with left padding, generates greedily by default and cuts at `until` strings.
Everything model-specific lives in `vistog_bench.model` and `vistog_bench.reducers`.

Video: `max_frames` frames are sampled uniformly (as `llava_hf` samples them) and each goes through the vision path
as an image, giving `budget` tokens; the LLM sees `<frame 1 tokens> <frame 2 tokens> ...` in temporal order, then the
question, i.e. frames x budget visual tokens in all.

Per-request profiling: give the instance a profiler (`vistog_bench.profiling.RequestProfiler`) and every batch it
serves becomes a `ProfileRecord`; the profiler observes the model from outside, the adapter only marks requests.
A sample whose image or video cannot be decoded fails alone: its answer is empty and the reason is kept in
`sample_failures`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import UsageError
from .model import VisToGForConditionalGeneration, build_inputs, load_checkpoint
from .model.processing import IMAGE_TOKEN
from .reducers import METHODS, apply_method, tokens_per_image

# lmms-eval's default chat for llava-hf/llava-1.5 checkpoints without a chat template (models/simple/llava_hf.py):
# LLaVA-1.5's vicuna_v1 conversation, system prompt included.
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an artificial "
    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {{ message['content'] }} {% elif message['role'] == 'user' %}USER: {{ message['content'] }} {% else %} "
    "ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
DEFAULT_MAX_NEW_TOKENS = 1024  # llava_hf's default when a task sets none

def configure_method(model: VisToGForConditionalGeneration, method: str, budget: int | None, seed: int = 0) -> int:
    """Set `model` up for `method` at `budget` (None: the checkpoint's own count, N or P). Returns the budget."""
    if budget is None:
        budget = model.config.num_semantic_tokens or model.config.num_patches
    apply_method(model, method, budget, seed=seed)
    return budget


def load_frames(path: str, max_frames: int) -> list[Image.Image]:
    """`max_frames` frames sampled uniformly over the video, as lmms-eval's llava_hf samples them."""
    from decord import VideoReader, cpu

    reader = VideoReader(path, ctx=cpu(0))
    index = np.linspace(0, len(reader) - 1, max_frames, dtype=int).tolist()
    return [Image.fromarray(frame) for frame in reader.get_batch(index).asnumpy()]


@dataclass
class _Sample:
    context: str
    images: list[Image.Image]
    failure: str | None = None


class VisToGLMM(lmms):
    """lmms-eval simple model for LLaVA-1.5 checkpoints with VisToG or a training-free reducer at a token budget."""

    def __init__(
        self,
        pretrained: str,
        budget: int | None = None,
        method: str = "vistog",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        attn_implementation: str = "sdpa",
        max_frames: int = 8,
        seed: int = 0,
        chat_template: str | None = None,
        profiler=None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise UsageError(f"unknown model_args for vistog: {', '.join(sorted(kwargs))}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float16" if device.startswith("cuda") else "float32")
        self._device = torch.device(device)
        self.method = method
        self.model, self.processor = load_checkpoint(
            pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        self.budget = configure_method(self.model, method, None if budget in (None, "") else int(budget), int(seed))
        self.tokens_per_image = tokens_per_image(self.model)
        self.tokenizer = self.processor.tokenizer
        self.chat_template = chat_template
        self.batch_size_per_gpu = int(batch_size)
        self.max_frames = int(max_frames)
        self.profiler = profiler
        self.sample_failures: list[dict] = []
        self.profile_records: list = []  # ProfileRecord per served batch, when a profiler is given
        self.keep_loaded = False  # True: survive lmms-eval's post-evaluation clean() (one load, several tasks)

    # -- lmms-eval properties --------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    # -- prompts and visuals -----------------------------------------------------------------------------------------
    def chat_prompt(self, context: str, num_images: int, answer: str | None = None) -> str:
        """LLaVA-1.5 prompt; placeholders are prepended (space-separated) when the task's text has none, as llava_hf."""
        if IMAGE_TOKEN not in context and num_images:
            context = " ".join([IMAGE_TOKEN] * num_images) + "\n" + context
        messages = [{"role": "user", "content": context}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        template = self.chat_template or self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=answer is None
        )

    def load_sample(self, doc_to_visual, task: str, split: str, doc_id: int, context: str) -> _Sample:
        """The sample's images (video paths become frames); a decoding failure fails this sample only."""
        try:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            images: list[Image.Image] = []
            for visual in visuals or []:
                if isinstance(visual, Image.Image):
                    images.append(visual.convert("RGB"))
                elif isinstance(visual, str):
                    images.extend(load_frames(visual, self.max_frames))
                else:
                    raise TypeError(f"unsupported visual of type {type(visual).__name__}")
        except torch.OutOfMemoryError:
            raise
        except (OSError, UnidentifiedImageError, RuntimeError, TypeError, ValueError) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            self.sample_failures.append({"task": task, "split": split, "doc_id": doc_id, "reason": reason})
            return _Sample(context, [], failure=reason)
        return _Sample(context, images)

    def _request_scope(self, task: str, batch_size: int):
        if self.profiler is None:
            return contextlib.nullcontext(None)
        return self.profiler.request(method=self.method, budget=self.budget, batch_size=batch_size, task=task)

    @staticmethod
    def _stage(request, name: str):
        return request.stage(name) if request is not None else contextlib.nullcontext()

    # -- lmms-eval API ---------------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        def sort_key(args):
            return -len(args[0]), args[0]  # longest first: padding waste and OOMs show up early

        collator = lmms_utils.Collator([request.args for request in requests], sort_key, grouping=True)
        results: list[GenerationResult] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.method}@{self.budget}")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            results.extend(self._generate_batch(contexts, dict(all_gen_kwargs[0]), doc_to_visuals, doc_ids, tasks, splits))
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(results)

    def _generate_batch(self, contexts, gen_kwargs, doc_to_visuals, doc_ids, tasks, splits) -> list[GenerationResult]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        temperature = float(gen_kwargs.get("temperature") or 0)
        do_sample = temperature > 0
        with self._request_scope(tasks[0], len(contexts)) as request:
            with self._stage(request, "preprocess"):
                samples = [
                    self.load_sample(visual_fn, task, split, doc_id, context)
                    for context, visual_fn, task, split, doc_id in zip(contexts, doc_to_visuals, tasks, splits, doc_ids)
                ]
                live = [s for s in samples if s.failure is None]
                if live:
                    inputs = build_inputs(
                        self.processor,
                        [self.chat_prompt(s.context, len(s.images)) for s in live],
                        [s.images for s in live],
                        self.tokens_per_image,
                    ).to(self.device)
                    if "pixel_values" in inputs:
                        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            if not live:
                return [GenerationResult("", TokenCounts(0, 0)) for _ in samples]
            with torch.inference_mode():
                output_ids = self.model.generate(
                    **inputs,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_p=gen_kwargs.get("top_p") if do_sample else None,
                    num_beams=int(gen_kwargs.get("num_beams") or 1),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id,
                    eos_token_id=self.eot_token_id,
                )
            new_ids = output_ids[:, inputs["input_ids"].shape[1] :]
            output_counts = [self._output_length(ids) for ids in new_ids]
            input_counts = inputs["attention_mask"].sum(dim=1).tolist()
            if request is not None:
                visual = sum(len(s.images) for s in live) * self.budget
                request.set_tokens(visual=visual, text=sum(input_counts) - visual, output=sum(output_counts))
        if request is not None:
            self.profile_records.append(request.record)
        texts = iter(
            (self._cut_at_stop(text, until), TokenCounts(int(n_in), int(n_out)))
            for text, n_in, n_out in zip(self.tokenizer.batch_decode(new_ids, skip_special_tokens=True), input_counts, output_counts)
        )
        return [GenerationResult("", TokenCounts(0, 0)) if s.failure else GenerationResult(*next(texts)) for s in samples]

    def _output_length(self, ids: torch.Tensor) -> int:
        """Generated tokens up to and including the first end-of-sequence token."""
        stops = (ids == self.eot_token_id).nonzero()
        return int(stops[0, 0]) + 1 if len(stops) else len(ids)

    @staticmethod
    def _cut_at_stop(text: str, until: list[str]) -> str:
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of the continuation after the LLaVA-1.5 prompt, and whether greedy decoding
        would produce it. One request at a time (contexts differ in images)."""
        results = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in tqdm(
            [request.args for request in requests], disable=self.rank != 0, desc=f"{self.method}@{self.budget} ll"
        ):
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self.task_dict[task][split][doc_id])
            sample = self.load_sample(doc_to_visual, task, split, doc_id, context)
            if sample.failure:
                results.append((float("-inf"), False))
                continue
            prompt = self.chat_prompt(context, len(sample.images))
            inputs = build_inputs(self.processor, [prompt], [sample.images], self.tokens_per_image).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            target = self.tokenizer(" " + continuation.strip(), add_special_tokens=False, return_tensors="pt")
            target_ids = target["input_ids"].to(self.device)  # [1, C]
            input_ids = torch.cat([inputs["input_ids"], target_ids], dim=1)
            attention_mask = torch.ones_like(input_ids)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, pixel_values=inputs.get("pixel_values")
                ).logits
            count = target_ids.shape[1]
            logprobs = torch.log_softmax(logits[0, -count - 1 : -1].float(), dim=-1)  # [C, V]
            chosen = logprobs.gather(1, target_ids[0, :, None])[:, 0]
            greedy = bool((logprobs.argmax(dim=-1) == target_ids[0]).all())
            results.append((float(chosen.sum()), greedy))
        return results

    def clean(self) -> None:
        """lmms-eval frees the model after each evaluation; the harness keeps it across its tasks (`keep_loaded`)."""
        if not self.keep_loaded:
            super().clean()

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vistog: multi-round generation is not supported; use single-turn tasks")


__all__ = ["VisToGLMM", "configure_method", "METHODS"]
