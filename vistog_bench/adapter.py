"""The lmms-eval model `vistog`: LLaVA-1.5 / VisToG / training-free reducers at a visual-token budget.

    python -m lmms_eval eval --model vistog --batch_size 8 \
        --model_args pretrained=/ckpt/llava-vistog-64,budget=64,method=vistog,device=cuda,dtype=float16 \
        --tasks gqa

(lmms-eval passes `--batch_size` to the model itself; `batch_size` inside `--model_args` is a duplicate.) A method's
options go in brackets, `method=tome[order=spatial,matching=model]` (lmms-eval's argument split keeps bracketed
commas); served models, profile records and cells name the method by that label.

Two classes behind the one name, as lmms-eval 0.7 registers its own models (ModelManifest in `lmms_entry`):
`VisToGChatLMM` (the default resolution: requests carry `doc_to_messages`, lmms-eval's chat interface) and
`VisToGLMM` (with `--force_simple`: requests carry the task's text and `doc_to_visual`; also log-likelihood). They
share everything below the prompt: both turn a request into conversation turns, render them with the checkpoint's
chat template through `model.prompting.PromptBuilder` (structured llava-hf template, string template, or LLaVA-1.5's
vicuna_v1 default, as lmms-eval's `llava_hf` falls back to it; `chat_template=FILE` overrides), expand each image
placeholder to the budget, batch with left padding, generate greedily by default and cut at `until` strings.
Everything model-specific lives in `vistog_bench.model` and `vistog_bench.reducers`.

Other families (LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL; `model.families`) load as transformers' own classes; their
prompts come from the same PromptBuilder with the checkpoint's template, and their processor expands each
placeholder to the image's own (size-dependent) count, as transformers documents (`processor(images=, text=)`). The
sample log then records, per sample, `visual_tokens_unreduced` and the `visual_tokens` the LLM received.

Video (a video path: a simple request's string visual, a chat request's video part). LLaVA-1.5, VisToG and
LLaVA-NeXT: `max_frames` frames are sampled uniformly (as `llava_hf` samples them) and each goes through the vision
path as an image, giving `budget` tokens; the LLM sees `<frame 1 tokens> <frame 2 tokens> ...` in temporal order, then
the question, i.e. frames x budget visual tokens in all. LLaVA-OneVision and Qwen2.5-VL: the video goes through the
model's own video path: its frames, sampled as lmms-eval samples them for that model (`ModelFamily.video_frame_indices`:
`max_frames` uniform for OneVision; an even count up to `max_frames` for Qwen2.5-VL), reach the processor as one video
with the template's video placeholder, and the sample log records `video_placeholders`, `video_frames` and the
video's run of video tokens in `visual_tokens_unreduced` / `visual_tokens` (runs in prompt order). Frames a task
gives as images (a list of PIL frames, e.g. `shapes_video`) stay images. A video that cannot be decoded fails its
sample alone.

Configured through the constructor only. lmms-eval gives `pretrained=PATH,...` and the adapter loads the checkpoint;
a harness that serves one loaded model to several evaluations builds it once with `serve_checkpoint` and passes
`served=` to one adapter per evaluation (lmms-eval's `clean()` then frees the adapter, not the model). Per-request
profiling: pass `profiler=` (`vistog_bench.profiling.RequestProfiler`, attached by its owner) and every batch served
becomes a ProfileRecord that the profiler keeps (`profiler.take_records()`); the profiler observes the model from
outside, the adapter only marks requests. What the adapter hands back besides lmms-eval's answers comes through one
path, `take_sample_log()`: per sample the exact rendered prompt, its image placeholders and the tokens each expands
to. A sample whose image, video or prompt cannot be built fails alone (a truncated image or video file too: media are
decoded with PIL's truncation refused, `strict_image_decoding`): its answer is empty and the reason is in its
log entry; with `unscored_failures_in=` (the Task objects under evaluation) its requests are also taken out of those
tasks at `clean()`, between generation and scoring, so lmms-eval scores only the samples that were served.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm
from transformers import LogitsProcessorList

from .errors import UsageError
from .model import load_checkpoint
from .model.families import ModelBatch, VideoFrames, family_of_model, uniform_frame_indices
from .model.prompting import PromptBuilder, Turn, find_template, image_token_of, video_token_of
from .reducers import METHODS, AppliedMethod, applied_method, parse_method
from .reducers.families import family_sample_problem, family_vision_scores

DEFAULT_MAX_NEW_TOKENS = 1024  # llava_hf's default when a task sets none
PADDING_ONLY = "__padding_only__"  # lmms-eval 0.7.3's mark on the requests it adds to even out its ranks (evaluator.py)
# What a sample can fail on while its media and prompt are built: it then fails alone.
SAMPLE_ERRORS = (OSError, UnidentifiedImageError, RuntimeError, TypeError, ValueError, KeyError, UsageError)


def configure_method(model, method: str, budget: int | None, seed: int = 0) -> int | None:
    """Set `model` up for `method` at `budget` (None: the family's default, `ModelFamily.apply_method`: the
    checkpoint's own count, N or P, on LLaVA-1.5). Returns the budget it serves."""
    return family_of_model(model).apply_method(model, method, budget, seed=seed)


def read_video(path: str, indices_of) -> VideoFrames:
    """The frames `indices_of(total frames)` of the video at `path` (decord, as lmms-eval's llava_hf reads them). A
    file decord cannot decode is a ValueError naming it (decord raises its own DECORDError, no subclass of the
    errors a sample may fail on, for a file cut short)."""
    from decord import DECORDError, VideoReader, cpu

    try:
        reader = VideoReader(path, ctx=cpu(0))
        index = list(indices_of(len(reader)))
        frames = reader.get_batch(index).asnumpy()
    except DECORDError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "DECORDError"
        raise ValueError(f"cannot decode video {path}: {reason}") from None
    return VideoFrames(frames, float(reader.get_avg_fps()), len(reader), tuple(index))


@contextlib.contextmanager
def strict_image_decoding():
    """PIL refuses truncated images while inside. lmms-eval sets `ImageFile.LOAD_TRUNCATED_IMAGES = True` for the
    whole process when it is imported, so an image file cut short would decode with its missing rows grey and be
    scored as a normal sample; a sample's media are decoded inside this (datasets decodes an Image column when the
    row is read), so such a file fails its sample with PIL's "image file is truncated"."""
    from PIL import ImageFile

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_frames(path: str, max_frames: int) -> list[Image.Image]:
    """`max_frames` frames sampled uniformly over the video, as lmms-eval's llava_hf samples them."""
    clip = read_video(path, lambda total: uniform_frame_indices(total, max_frames))
    return [Image.fromarray(frame) for frame in clip.frames]


@dataclass(frozen=True)
class ServedModel:
    """A checkpoint loaded and set up for one method at one budget; `applied` is what the reducers installed."""

    pretrained: str
    model: torch.nn.Module  # as its family loads it (model.families)
    processor: object
    method: str
    budget: int
    tokens_per_image: int  # 0 for another family: its processor expands each image to the image's own count
    prompt_template: object  # model.prompting.PromptTemplate: the chat template prompts are rendered with
    applied: AppliedMethod | None

    def cell_facts(self) -> dict:
        """What a cell of this model records beside its scores (results.CellResult): the attention kernels it ran,
        and for a LLaVA-1.5 reducer how its budget counts and the visual tokens per image in the LLM."""
        facts = {"attention": attention_record(self.model, self.applied)}
        if self.applied is not None:
            facts.update(
                budget_convention=self.applied.budget_convention,
                llm_input_tokens=self.applied.llm_input_tokens,
                mean_layer_tokens=round(self.applied.mean_layer_tokens, 3),
            )
        return facts


def attention_record(model, applied: AppliedMethod | None) -> str:
    """One line naming the attention implementation of the LLM's and the vision encoder's layers (no method switches
    one) and what a method computes beside them (float32 scores from one layer's q / k)."""
    config = model.config
    llm = (
        sorted(set(applied.llm_attention))
        if applied is not None and applied.llm_attention
        else [config.text_config._attn_implementation or "eager"]
    )
    vision = applied.vision_attention if applied is not None else (config.vision_config._attn_implementation or "eager")
    parts = [f"llm {'/'.join(llm)}", f"vision {vision}"]
    if applied is not None and applied.scored_llm_layers:
        parts.append("float32 scores from q / k of LLM layers " + ",".join(map(str, applied.scored_llm_layers)))
    scores = applied.vision_scores if applied is not None else family_vision_scores(model)
    return "; ".join(parts + ([scores] if scores else []))


def serve_checkpoint(
    pretrained: str,
    *,
    method: str = "vistog",
    budget: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    seed: int = 0,
    chat_template: str | None = None,
) -> ServedModel:
    """Load `pretrained` and set it up for `method` (a name, or `name[option=value,...]`) at `budget` (None: the
    checkpoint's own count)."""
    method = parse_method(method).label  # checked before anything loads; the label records and reports use
    model, processor = load_checkpoint(pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation)
    budget = configure_method(model, method, budget, seed)
    template = find_template(processor, pretrained, chat_template or None)
    per_image = family_of_model(model).tokens_per_placeholder(model)
    return ServedModel(str(pretrained), model, processor, method, budget, per_image, template, applied_method(model))


@dataclass
class _Sample:
    task: str
    doc_id: int
    turns: list[Turn]
    images: list[Image.Image]
    videos: list[VideoFrames] = field(default_factory=list)
    prompt: str = ""
    failure: str | None = None


def _failure_reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _as_media(visuals, max_frames: int, video_indices) -> tuple[list[Image.Image], list[VideoFrames]]:
    """(PIL images as RGB, videos): a video path becomes one video where the model takes videos (`video_indices`:
    its family's frame sampling, (total, max_frames) -> indices; else None), else `max_frames` frames as images."""
    images: list[Image.Image] = []
    videos: list[VideoFrames] = []
    for visual in visuals or []:
        if isinstance(visual, Image.Image):
            images.append(visual.convert("RGB"))
        elif isinstance(visual, str) and video_indices is not None:
            videos.append(read_video(visual, lambda total: video_indices(total, max_frames)))
        elif isinstance(visual, str):
            images.extend(load_frames(visual, max_frames))
        else:
            raise TypeError(f"unsupported visual of type {type(visual).__name__}")
    return images, videos


def process_device(device: str | None, environ=os.environ) -> str:
    """The device this process serves on. Under a multi-process launch (torchrun, `accelerate launch`: WORLD_SIZE > 1)
    every process takes the GPU of its LOCAL_RANK, whatever CUDA index was asked (as lmms-eval's own llava_hf binds
    ranks; lmms-eval splits the requests but leaves the device to the model), so no two ranks share `cuda:0`. Alone,
    `device` is kept; None means "cuda" where a GPU is visible, else "cpu"."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] == "cuda" and int(environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(environ.get('LOCAL_RANK', '0'))}"
    return device


class VisToGLMM(lmms):
    """lmms-eval simple model (`--force_simple`) for LLaVA-1.5 checkpoints with VisToG or a training-free reducer at
    a token budget; the chat model `VisToGChatLMM` shares all of it but the request format."""

    def __init__(
        self,
        pretrained: str | None = None,
        budget: int | None = None,
        method: str = "vistog",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        attn_implementation: str = "sdpa",
        max_frames: int = 8,
        seed: int = 0,
        chat_template: str | None = None,
        served: ServedModel | None = None,
        profiler=None,
        unscored_failures_in: tuple = (),
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise UsageError(f"unknown model_args for vistog: {', '.join(sorted(kwargs))}")
        if served is None:
            if not pretrained:
                raise UsageError("vistog needs model_args pretrained=PATH")
            device = process_device(device)
            if device.startswith("cuda:"):
                torch.cuda.set_device(device)  # what allocates without naming a device lands on this rank's GPU
            served = serve_checkpoint(
                pretrained,
                method=method,
                budget=None if budget in (None, "") else int(budget),
                device=device,
                dtype=dtype or ("float16" if device.startswith("cuda") else "float32"),
                attn_implementation=attn_implementation,
                seed=int(seed),
                chat_template=chat_template,
            )
        self._device = next(served.model.parameters()).device
        self.model, self.processor = served.model, served.processor
        self.method, self.budget, self.tokens_per_image = served.method, served.budget, served.tokens_per_image
        self.tokenizer = self.processor.tokenizer
        self.prompt_template = served.prompt_template
        self.prompts = PromptBuilder(
            self.prompt_template, self.tokenizer, image_token_of(self.processor), video_token_of(self.processor)
        )
        self.family = family_of_model(self.model)
        # a video goes through the model's video path, sampled as the family samples it; None: frames as images
        self.video_indices = self.family.video_frame_indices if self.family.native_video(self.model) else None
        self.batch_size_per_gpu = int(batch_size)
        self.max_frames = int(max_frames)
        self.profiler = profiler
        self.unscored_failures_in = tuple(unscored_failures_in)
        self._sample_log: list[dict] = []
        self._replay: dict | None = None  # (task, doc_id, idx) -> (responses, token counts) while `replaying`

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

    # -- samples: media, prompt, log ---------------------------------------------------------------------------------
    def take_sample_log(self) -> list[dict]:
        """One entry per sample served since the last call: task, doc_id, the exact rendered prompt (before each
        placeholder is expanded), image_placeholders, tokens_per_placeholder, video_placeholders and video_frames
        (frames fed per video, native video path), and `failure` for a failed sample."""
        log, self._sample_log = self._sample_log, []
        return log

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _simple_sample(self, context: str, doc_to_visual, doc_id: int, task: str, split: str) -> _Sample:
        images, videos = _as_media(doc_to_visual(self._doc(task, split, doc_id)), self.max_frames, self.video_indices)
        return _Sample(task, doc_id, [Turn("user", context, len(images), len(videos))], images, videos)

    def _build(self, make, task: str, doc_id: int) -> _Sample:
        """`make()` -> _Sample with its prompt rendered; any media or prompt failure fails this sample only (a
        truncated image too: its row is read and its media decoded under `strict_image_decoding`)."""
        try:
            with strict_image_decoding():
                sample = make()
            problem = family_sample_problem(self.model, len(sample.images), len(sample.videos))
            if problem:
                raise UsageError(problem)
            sample.prompt = self.prompts.generation_prompt(sample.turns)
        except torch.OutOfMemoryError:
            raise
        except SAMPLE_ERRORS as exc:
            sample = _Sample(task, doc_id, [], [], failure=_failure_reason(exc))
        entry = {
            "task": task,
            "doc_id": doc_id,
            "prompt": sample.prompt,
            "image_placeholders": len(sample.images),
            "tokens_per_placeholder": self.tokens_per_image,
            "video_placeholders": len(sample.videos),
            "video_frames": [len(v.indices) for v in sample.videos],
        }
        if sample.failure:
            entry["failure"] = sample.failure
        self._sample_log.append(entry)
        return sample

    def _request_scope(self, task: str, batch_size: int):
        if self.profiler is None:
            return contextlib.nullcontext(None)
        return self.profiler.request(method=self.method, budget=self.budget, batch_size=batch_size, task=task)

    @staticmethod
    def _stage(request, name: str):
        return request.stage(name) if request is not None else contextlib.nullcontext()

    def _inputs(self, samples: list[_Sample]) -> ModelBatch:
        """The live samples as the model's inputs (its family builds them), on the device, pixels in its dtype."""
        prompts, media = [s.prompt for s in samples], ([s.images for s in samples], [s.videos for s in samples])
        batch = self.family.build_inputs(self.model, self.processor, prompts, *media, self.tokens_per_image)
        inputs = batch.inputs.to(self.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.model.dtype)
        batch.inputs = inputs
        return batch

    # -- lmms-eval API ---------------------------------------------------------------------------------------------
    def _sample_maker(self, args):
        """(task, doc_id, make) for one request's arguments (simple: context, gen_kwargs, doc_to_visual, ...)."""
        context, _, doc_to_visual, doc_id, task, split = args
        return task, doc_id, lambda: self._simple_sample(context, doc_to_visual, doc_id, task, split)

    @staticmethod
    def _gen_kwargs(args) -> dict:
        return dict(args[1])

    @contextlib.contextmanager
    def replaying(self, answers: dict, sample_log: list[dict]):
        """Inside: requests are answered from `answers` ((task, doc_id, idx) -> (responses, token counts): what the
        ranks of a data-parallel cell generated, run.ranks) instead of by the model, and `sample_log` (theirs) is this
        adapter's; its failed samples' requests are answered as a failed sample is, then leave with clean()."""
        self._replay, self._sample_log = answers, list(sample_log)
        try:
            yield
        finally:
            self._replay = None

    def _answer(self, requests: list[Instance], serve, empty) -> list:
        """`serve(requests)` for the requests that need the model: replayed ones are answered from the record, and
        lmms-eval's padding requests (its ranks are evened out for FSDP/DDP models; this model holds no collective)
        get `empty` without running it."""
        if self._replay is not None:
            return self._replayed(requests, empty)
        needed = [r for r in requests if not r.metadata.get(PADDING_ONLY)]
        served = iter(serve(needed) if needed else [])
        return [empty if r.metadata.get(PADDING_ONLY) else next(served) for r in requests]

    def _replayed(self, requests: list[Instance], empty) -> list:
        failed = {(e["task"], e["doc_id"]) for e in self._sample_log if e.get("failure")}
        taken: dict = {}  # a request lmms-eval repeats (`repeats`) comes once per recorded response
        answers = []
        for request in requests:
            key = (request.task_name, request.doc_id, request.idx)
            if key not in self._replay:
                if key[:2] not in failed:
                    raise RuntimeError(f"no recorded answer for request {key} of a data-parallel cell")
                answers.append(empty)
                continue
            responses, counts = self._replay[key]
            k = taken[key] = taken.get(key, -1) + 1
            answers.append(responses[k] if counts[k] is None else GenerationResult(responses[k], counts[k]))
        return answers

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        return self._answer(requests, self._generate_until, GenerationResult("", TokenCounts(0, 0)))

    def _generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        def sort_key(args):
            return -len(args[0]), args[0]  # longest first: padding waste and OOMs show up early

        args = [request.args for request in requests]
        collator = lmms_utils.Collator(
            args, sort_key, group_fn=self._gen_kwargs, grouping=True
        )  # one batch: one gen_kwargs
        results: list[GenerationResult] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.method}@{self.budget}")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            results.extend(self._generate_batch(chunk))
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(results)

    def _generate_batch(self, chunk) -> list[GenerationResult]:
        gen_kwargs = self._gen_kwargs(chunk[0])
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        temperature = float(gen_kwargs.get("temperature") or 0)
        do_sample = temperature > 0
        makers = [self._sample_maker(args) for args in chunk]
        with self._request_scope(makers[0][0], len(chunk)) as request:
            with self._stage(request, "preprocess"):
                samples = [self._build(make, task, doc_id) for task, doc_id, make in makers]
                live = [s for s in samples if s.failure is None]
                if live:
                    batch = self._inputs(live)
                    inputs = batch.inputs
            if not live:
                return [GenerationResult("", TokenCounts(0, 0)) for _ in samples]
            with torch.inference_mode():
                output_ids = self.model.generate(
                    **inputs,
                    logits_processor=LogitsProcessorList([request.first_token_clock]) if request is not None else None,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_p=gen_kwargs.get("top_p") if do_sample else None,
                    num_beams=int(gen_kwargs.get("num_beams") or 1),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None
                    else self.eot_token_id,
                    eos_token_id=self.eot_token_id,
                )
            new_ids = output_ids[:, inputs["input_ids"].shape[1] :]
            output_counts = [self._output_length(ids) for ids in new_ids]
            input_counts = inputs["attention_mask"].sum(dim=1).tolist()
            visual = self._log_visual_tokens(samples, batch)
            if request is not None:
                request.set_tokens(visual=visual, text=sum(input_counts) - visual, output=sum(output_counts))
        texts = iter(
            (self._cut_at_stop(text, until), TokenCounts(int(n_in), int(n_out)))
            for text, n_in, n_out in zip(
                self.tokenizer.batch_decode(new_ids, skip_special_tokens=True), input_counts, output_counts, strict=True
            )
        )
        return [
            GenerationResult("", TokenCounts(0, 0)) if s.failure else GenerationResult(*next(texts)) for s in samples
        ]

    def _log_visual_tokens(self, samples: list[_Sample], batch: ModelBatch) -> int:
        """Visual tokens the LLM receives for the live samples of a batch (all images and videos); where the family
        counts them per sample (all but LLaVA-1.5), each sample's unreduced and received counts (per image / video
        run, in prompt order) also go in its log entry."""
        live = [s for s in samples if s.failure is None]
        counts = self.family.visual_token_counts(self.model, batch, self.budget, [len(s.images) for s in live])
        if counts.per_sample is not None:
            entries = [e for e in self._sample_log[-len(samples) :] if "failure" not in e]
            for entry, (unreduced, kept) in zip(entries, counts.per_sample, strict=True):
                entry["visual_tokens_unreduced"], entry["visual_tokens"] = unreduced, kept
        return counts.total

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
        """Sum of log-probabilities of the continuation after the prompt, and whether greedy decoding would produce
        it. One request at a time (contexts differ in images)."""
        return self._answer(requests, self._loglikelihood, (float("-inf"), False))

    def _loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for args in tqdm(
            [request.args for request in requests], disable=self.rank != 0, desc=f"{self.method}@{self.budget} ll"
        ):
            # (context, doc_to_target, doc_to_visual, doc_id, task, split): the simple generation layout with the target
            # where gen_kwargs stands, so the sample maker reads it as it reads a generation request
            task, doc_id, make = self._sample_maker(args)
            sample = self._build(make, task, doc_id)
            doc_to_target, split = args[1], args[5]
            if sample.failure:
                results.append((float("-inf"), False))
                continue
            continuation = (
                doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            )
            inputs = self._inputs([sample]).inputs
            target = self.tokenizer(" " + continuation.strip(), add_special_tokens=False, return_tensors="pt")
            target_ids = target["input_ids"].to(self.device)  # [1, C]
            input_ids = torch.cat([inputs["input_ids"], target_ids], dim=1)
            attention_mask = torch.ones_like(input_ids)
            media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
            if "mm_token_type_ids" in media:  # Qwen2.5-VL: the continuation is text
                media["mm_token_type_ids"] = torch.cat([media["mm_token_type_ids"], torch.zeros_like(target_ids)], 1)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **media).logits
            count = target_ids.shape[1]
            logprobs = torch.log_softmax(logits[0, -count - 1 : -1].float(), dim=-1)  # [C, V]
            chosen = logprobs.gather(1, target_ids[0, :, None])[:, 0]
            greedy = bool((logprobs.argmax(dim=-1) == target_ids[0]).all())
            results.append((float(chosen.sum()), greedy))
        return results

    def clean(self) -> None:
        """lmms-eval calls this between generation and scoring: the requests of failed samples leave the tasks in
        `unscored_failures_in`, then lmms-eval frees this adapter's modules (a `served` model lives on with its
        owner)."""
        failed = {(e["task"], e["doc_id"]) for e in self._sample_log if e.get("failure")}
        for task in self.unscored_failures_in:
            task._instances = [i for i in task.instances if (i.task_name, i.doc_id) not in failed]
        super().clean()

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vistog: multi-round generation is not supported; use single-turn tasks")


class VisToGChatLMM(VisToGLMM):
    """lmms-eval chat model (the default resolution of `--model vistog`): requests carry `doc_to_messages`, whose
    user turns hold image / video / text parts (lmms_eval.protocol.ChatMessages). Video parts become one video
    placeholder on a family's video path (OneVision, Qwen2.5-VL), else frames, one image placeholder each; an image
    part may carry a file path (lmms-eval's default messages make one of a path with an image extension); text parts
    of a turn are joined with a space."""

    is_simple = False

    @staticmethod
    def _is_chat(args) -> bool:
        """A messages request: (context, doc_to_messages, gen_kwargs, doc_id, task, split). A task with its own
        class (`class:` in its YAML) keeps the simple format even in chat mode: (context, gen_kwargs, doc_to_visual,
        doc_id, task, split)."""
        return isinstance(args[2], dict)

    def _sample_maker(self, args):
        if not self._is_chat(args):
            return super()._sample_maker(args)
        _, doc_to_messages, _, doc_id, task, split = args
        return task, doc_id, lambda: self._chat_sample(doc_to_messages, doc_id, task, split)

    @classmethod
    def _gen_kwargs(cls, args) -> dict:
        return dict(args[2] if cls._is_chat(args) else args[1])

    def _chat_sample(self, doc_to_messages, doc_id: int, task: str, split: str) -> _Sample:
        from lmms_eval.protocol import ChatMessages

        chat = ChatMessages(messages=doc_to_messages(self._doc(task, split, doc_id)))
        turns, images, videos = [], [], []
        for message in chat.messages:
            media = [
                Image.open(part.url) if part.type == "image" and isinstance(part.url, str) else part.url
                for part in message.content
                if part.type in ("image", "video")
            ]  # an image path: an image
            turn_images, turn_videos = _as_media(media, self.max_frames, self.video_indices)
            text = " ".join(part.text for part in message.content if part.type == "text")
            turns.append(Turn(message.role, text, len(turn_images), len(turn_videos)))
            images += turn_images
            videos += turn_videos
        return _Sample(task, doc_id, turns, images, videos)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "vistog chat model: lmms-eval builds only generation requests for chat models; "
            "use --force_simple for log-likelihood tasks"
        )


__all__ = ["VisToGLMM", "VisToGChatLMM", "ServedModel", "serve_checkpoint", "configure_method", "METHODS"]
