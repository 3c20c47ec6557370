"""Per-request stage profiling: the profiler attaches hooks from outside the model and turns each request into a
`ProfileRecord` (kind="request").

    profiler = RequestProfiler(model, device="cuda")         # no hooks yet
    with profiler.attached():                                # installs hooks; removes them on exit
        with profiler.request(method="vistog", budget=64, batch_size=8, task="mme") as req:
            with req.stage("preprocess"):                    # a CPU stage the caller times
                inputs = ...
            out = model.generate(**inputs)
            req.set_tokens(visual=512, text=320, output=96)  # request totals; inferred from the hooks if not given
        record = req.record

Stage times (milliseconds):
    preprocess   the caller's `req.stage("preprocess")` (host perf_counter; other caller stage names go to
                 extra["stages_ms"])
    vision       vision tower forward (CLIP up to the feature layer, semantic tokens included)
    grouping     VisToG's grouping layer forward, or where a training-free method reduces the tokens (the caller's
                 `applied` says which): a reducer after the vision tower is the gap vision end -> projector start;
                 a method that selects inside the LLM (divprune, cdpruner, fastv, dart, pdrop, sparsevlm, holitom,
                 vscan's second stage) is timed in its forward pre-hooks on the decoder layers during the prefill,
                 from the first hook to the layer's own first module (that part is also inside prefill_ms:
                 extra["grouping_in_prefill_ms"]). None, with its reason, when nothing reduces.
    projector    multi-modal projector forward
    prefill      the LLM's first forward of the generate, lm_head included (the first token's logits)
    decode       from the end of the prefill to the end of the last decode step: every generated token after the
                 first, with the sampling and bookkeeping between forwards (what a user waits for)
    total        the whole request, from entering `request()` to leaving it
ttft_ms is the time to first token: request start -> first token's logits (preprocess, vision, grouping,
projector and prefill, plus the glue between them). An independent clock beside it: `req.first_token_clock`, a
transformers LogitsProcessor that marks the time of its first call (the first token's logits reach the sampler), as
optimum-benchmark's latency tracker does (`trackers/latency.py`, PerTokenLatencyLogitsProcessor); pass it to
`generate(logits_processor=...)` and the record's extra["ttft_logits_processor_ms"] holds its reading.

The record is assembled by one tracker per concern, in the manner of optimum-benchmark's latency / memory / energy
trackers: `_latency` (stage times), `_flop_counts` (analytic and counted), `_memory`, `_kv_cache`, `_energy`; each
returns the record fields it owns, its extra entries and the reasons for its nulls.

On CUDA every mark is an event on the current stream; the request synchronises once, when it closes. On CPU marks
are perf_counter readings. Memory: on CUDA the allocator's peak per stage and over the whole request (`AllocatorPeaks`:
the running peak is read before each stage's `reset_peak_memory_stats`, so what runs between stages, a reducer's
temporaries, counts in "total"; anything else reading `max_memory_allocated` during a request sees these resets);
everywhere the process's peak RSS over the request. Energy: NVML's total-energy counter before and after (nvml.py).

With `path="compiled"` (torch.compile / CUDA graphs for decode steps, prefill eager as transformers does it) the
hooks are silent inside the compiled region: decode is then timed as one span, prefill end -> request end, and its
step count is output_tokens / batch - 1 (lengths are forced there). transformers compiles only when its criteria hold
(a GPU-like device, a compileable cache) and otherwise warns and runs eagerly: a record says "compiled" only when its
decode steps ran without firing the hooks, and extra["compile"] says whether a graph ran and, if not, why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..dtypes import dtype_name
from ..model.families import family_of_model
from ..results import STAGES, ProfileRecord
from . import flops as F
from .counting import MISMATCH_TOLERANCE, flop_counter, mismatches
from .hooks import first_tensor, llm_new_tokens, stage_hooks, stage_modules
from .memory import kv_cache_bytes, measured_cache_bytes, module_bytes, peak_rss_bytes, reset_peak_rss
from .nvml import EnergyMeter
from .timers import make_clock

PATHS = ("eager", "compiled")
VISION_STAGES = STAGES[1:4]  # vision, grouping, projector: the hooked modules before the LLM


@dataclass
class _Span:
    """One forward of a vision-side module; `size` holds what its FLOPs depend on."""

    stage: str
    start: Any
    end: Any = None
    size: tuple[int, ...] = ()
    flops_start: float = 0.0
    flops: float = 0.0


@dataclass
class _LlmStep:
    """One LLM forward (+ lm_head): the prefill or one decode step."""

    kind: str  # "prefill" | "decode"
    batch: int
    new_tokens: int
    kv_length: int
    start: Any
    end: Any = None
    logits_tokens: int = 1
    flops_start: float = 0.0
    flops: float = 0.0


@dataclass
class _Tokens:
    visual: int | None = None
    text: int | None = None
    output: int | None = None


@dataclass
class _Part:
    """What one tracker contributes to a record: fields of ProfileRecord, extra entries, reasons for nulls."""

    fields: dict[str, Any]
    extra: dict[str, Any]
    reasons: dict[str, str]


@dataclass
class _Observed:
    """A closed request as the hooks saw it: spans, LLM steps and token counts (request totals)."""

    spans: list[_Span]
    prefills: list[_LlmStep]
    decodes: list[_LlmStep]
    steps: list[_LlmStep]
    batch: int
    prompt_tokens: int | None  # per prompt, padded
    projected: int  # tokens through the projector
    visual: int
    text: int | None
    output: int
    decode_steps: int  # per prompt; counted from the hooks, or inferred on the compiled path

    def stage_spans(self, stage: str) -> list[_Span]:
        return [s for s in self.spans if s.stage == stage]


def compile_facts(decodes: list, decode_steps: int) -> dict[str, Any]:
    """Whether a compiled decode graph ran in a request asked to run compiled: its decode steps ran (decode_steps) and
    fired none of the stage hooks, which a compiled region does not call."""
    ran = not decodes and decode_steps > 0
    facts: dict[str, Any] = {"requested": True, "ran": ran, "decode_hooks_fired": len(decodes)}
    if decodes:
        facts["why_not"] = (
            "decode steps ran eagerly (their hooks fired): transformers skipped compilation (it compiles on a GPU-like "
            "device with a compileable cache, and warns otherwise)"
        )
    elif not ran:
        facts["why_not"] = "no decode step ran (one output token): no compiled graph had anything to run"
    return facts


class AllocatorPeaks:
    """Peak bytes of a device allocator per stage and over a whole request, from two calls: `read` (the peak since
    the last reset: `torch.cuda.max_memory_allocated`) and `reset` (`torch.cuda.reset_peak_memory_stats`).

    Each stage is measured alone (reset at its start), and the running peak is folded into the request's before every
    reset and at the end: the request's peak holds what ran between stages too (a reducer after the vision tower),
    where the max over stage peaks would lose it."""

    def __init__(self, read: Callable[[], int], reset: Callable[[], None]):
        self._read, self._reset = read, reset
        self.stages: dict[str, int] = {}
        self.request = 0

    def open(self) -> None:
        self._reset()
        self.stages, self.request = {}, 0

    def stage_starts(self) -> None:
        self.request = max(self.request, int(self._read()))
        self._reset()

    def stage_ends(self, key: str) -> None:
        peak = int(self._read())
        self.stages[key] = max(self.stages.get(key, 0), peak)
        self.request = max(self.request, peak)

    def close(self) -> dict[str, int]:
        """{stage: peak bytes, "total": the request's peak}."""
        self.request = max(self.request, int(self._read()))
        return {**self.stages, "total": self.request}


def cuda_allocator(device: torch.device) -> tuple[Callable[[], int], Callable[[], None]]:
    """(read, reset) of the CUDA caching allocator's peak on `device`, for AllocatorPeaks."""
    return (lambda: torch.cuda.max_memory_allocated(device)), (lambda: torch.cuda.reset_peak_memory_stats(device))


class FirstTokenClock:
    """A transformers LogitsProcessor that marks when it is first called: the first token's logits have reached the
    sampler (optimum-benchmark's PerTokenLatencyLogitsProcessor, first step only). Scores pass unchanged."""

    def __init__(self, clock) -> None:
        self._clock = clock
        self.mark = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.mark is None:
            self.mark = self._clock.mark()
        return scores


class Request:
    """One request being profiled; `record` is its ProfileRecord once the `with` block has closed."""

    def __init__(
        self,
        profiler: RequestProfiler,
        *,
        method: str,
        budget: int,
        batch_size: int,
        task: str | None,
        count_flops: bool,
        extra: dict[str, Any] | None,
    ):
        self._profiler = profiler
        self._clock = profiler.clock
        self.method, self.budget, self.batch_size, self.task = method, budget, batch_size, task
        self._extra = dict(extra or {})
        self._spans: list[_Span] = []
        self._open_spans: dict[str, _Span] = {}
        self._steps: list[_LlmStep] = []
        self._caller_ms: dict[str, float] = {}
        self._tokens = _Tokens()
        self._peaks = AllocatorPeaks(*profiler.allocator) if profiler.allocator is not None else None
        self._selection: list[tuple[Any, Any]] = []  # (first pre-hook, layer's own first module) per decoder layer
        self._selection_start: Any = None
        self._cache = None
        self._counter = flop_counter() if count_flops else None
        self._record: ProfileRecord | None = None
        self.first_token_clock = FirstTokenClock(self._clock)

    # -- the caller's side ---------------------------------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a host-side stage (tokenising, image preprocessing) with perf_counter; repeated names add up."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._caller_ms[name] = self._caller_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def set_tokens(self, *, visual: int | None = None, text: int | None = None, output: int | None = None) -> None:
        """Token counts of the whole request, summed over its prompts (visual: every image's tokens; text: prompt
        text incl. template; output: generated). Any left unset is inferred from the hooks (text then counts
        padding, output the generate's steps times the batch)."""
        if visual is not None:
            self._tokens.visual = int(visual)
        if text is not None:
            self._tokens.text = int(text)
        if output is not None:
            self._tokens.output = int(output)

    @property
    def record(self) -> ProfileRecord:
        if self._record is None:
            raise RuntimeError("the request's record exists once its `with profiler.request(...)` block has closed")
        return self._record

    # -- the hooks' side -------------------------------------------------------------------------------------------
    def _flops_now(self) -> float:
        return float(self._counter.get_total_flops()) if self._counter is not None else 0.0

    def _reset_peak(self) -> None:
        if self._peaks is not None:
            self._peaks.stage_starts()

    def _note_peak(self, key: str) -> None:
        if self._peaks is not None:
            self._peaks.stage_ends(key)

    def _in_prefill(self) -> bool:
        return bool(self._steps) and self._steps[-1].kind == "prefill" and self._steps[-1].end is None

    def enter_selection(self) -> None:
        """A decoder layer's forward pre-hooks start (the method's selection runs in them): prefill only."""
        if self._in_prefill():
            self._selection_start = self._clock.mark()

    def exit_selection(self) -> None:
        """The layer's own forward has started: its pre-hooks are done."""
        if self._selection_start is not None:
            self._selection.append((self._selection_start, self._clock.mark()))
            self._selection_start = None

    def enter(self, stage: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if stage == "llm":
            batch, new_tokens = llm_new_tokens(args, kwargs)
            steps = self._steps
            if not steps or new_tokens > 1:
                kind, kv_length = "prefill", new_tokens
            else:
                kind, kv_length = "decode", steps[-1].kv_length + new_tokens
            self._reset_peak()
            cache = kwargs.get("cache")
            self._cache = cache if cache is not None else kwargs.get("past_key_values", self._cache)
            steps.append(
                _LlmStep(kind, batch, new_tokens, kv_length, self._clock.mark(), flops_start=self._flops_now())
            )
            return
        tensor = first_tensor(args, kwargs)
        if stage == "vision":
            semantic = getattr(module, "semantic_tokens", None)
            size = (tensor.shape[0], semantic.shape[1] if semantic is not None else 0)
        elif stage == "grouping":  # (semantic [Bi, N, Dv], patches [Bi, P, Dv])
            size = (tensor.shape[0], tensor.shape[1])
        else:  # projector: [Bi, n, Dv]
            size = (tensor.shape[0] * tensor.shape[1],) if tensor.ndim == 3 else (tensor.shape[0],)
        self._reset_peak()
        self._open_spans[stage] = _Span(stage, self._clock.mark(), size=size, flops_start=self._flops_now())

    def exit(self, stage: str, module: nn.Module, output: Any) -> None:
        if stage == "lm_head":
            if not self._steps:
                return
            step = self._steps[-1]
            step.end = self._clock.mark()
            if output.ndim == 3:  # logits [B, t, V]
                step.logits_tokens = output.shape[1]
            step.flops = self._flops_now() - step.flops_start
            self._note_peak(step.kind)
            return
        span = self._open_spans.pop(stage, None)
        if span is None:
            return
        span.end = self._clock.mark()
        span.flops = self._flops_now() - span.flops_start
        self._note_peak(stage)
        self._spans.append(span)

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._peaks is not None:
            self._peaks.open()
        self._rss_reset = reset_peak_rss()
        self._energy_start = self._profiler.energy.read_mj()
        self._host_start = time.perf_counter()
        if self._counter is not None:
            self._counter.__enter__()
        self._start = self._clock.mark()

    def _abandon(self) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
        self._cache = None

    def _close(self) -> None:
        end = self._clock.mark()
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
        self._clock.synchronize()  # the one synchronisation of the request
        host_total_ms = (time.perf_counter() - self._host_start) * 1e3
        energy_end = self._profiler.energy.read_mj()
        self._record = self._build(end, host_total_ms, energy_end)
        self._cache = None

    # -- the record ------------------------------------------------------------------------------------------------
    def _observed(self, end: Any) -> _Observed:
        for step, following in zip(self._steps, self._steps[1:] + [None], strict=False):  # no step: [None] is left over
            if step.end is None:  # the decoder ran without lm_head (called directly): close at what came next
                step.end = following.start if following is not None else end
        prefills = [s for s in self._steps if s.kind == "prefill"]
        decodes = [s for s in self._steps if s.kind == "decode"]
        batch = self._steps[0].batch if self._steps else self.batch_size
        prompt_tokens = prefills[0].new_tokens if prefills else None
        projected = sum(s.size[0] for s in self._spans if s.stage == "projector")
        visual = self._tokens.visual if self._tokens.visual is not None else projected
        text = self._tokens.text
        if text is None and prompt_tokens is not None:
            text = batch * prompt_tokens - visual
        output = (
            self._tokens.output if self._tokens.output is not None else batch * (1 + len(decodes) if prefills else 0)
        )
        decode_steps = len(decodes)
        if not decodes and self._profiler.path == "compiled" and prefills and output > batch:
            decode_steps = -(-output // batch) - 1  # the longest prompt's steps (all equal when lengths are forced)
        return _Observed(
            self._spans,
            prefills,
            decodes,
            self._steps,
            batch,
            prompt_tokens,
            projected,
            visual,
            text,
            output,
            decode_steps,
        )

    def _build(self, end: Any, host_total_ms: float, energy_end: int | None) -> ProfileRecord:
        profiler = self._profiler
        seen = self._observed(end)
        parts = [
            self._latency(seen, end),
            self._flop_counts(seen),
            self._memory(),
            self._kv_cache(seen),
            self._energy(energy_end),
        ]
        fields: dict[str, Any] = {}
        extra: dict[str, Any] = {
            "clock": self._clock.kind,
            "host_total_ms": host_total_ms,
            "decode_steps": seen.decode_steps,
            "prompt_tokens": seen.prompt_tokens,
        }
        reasons: dict[str, str] = {}
        for part in parts:
            fields.update(part.fields)
            extra.update(part.extra)
            reasons.update(part.reasons)
        extra.update(self._extra)
        path = profiler.path
        if path == "compiled":
            extra["compile"] = compile_facts(seen.decodes, seen.decode_steps)
            path = "compiled" if extra["compile"]["ran"] else "eager"
        return ProfileRecord(
            kind="request",
            method=self.method,
            budget=self.budget,
            batch_size=self.batch_size,
            device=str(profiler.device),
            dtype=profiler.dtype_name,
            execution_path=path,
            task=self.task,
            visual_tokens=seen.visual,
            text_tokens=seen.text,
            output_tokens=seen.output,
            weight_bytes=profiler.weight_bytes,
            null_reasons=reasons,
            extra=extra,
            **fields,
        )

    def _reducer_gap_ms(self, seen: _Observed) -> float | None:
        """A reducer after the vision tower is no module: its stage is the gap between the vision tower and the
        projector."""
        if not self._profiler.reduces_after_vision:
            return None
        ms = self._clock.elapsed_ms
        # strict=False: an encoder that includes its projector (Qwen2.5-VL's PatchMerger) leaves no projector spans
        return sum(
            ms(v.end, p.start) for v, p in zip(seen.stage_spans("vision"), seen.stage_spans("projector"), strict=False)
        )

    def _reduction_ms(self, seen: _Observed) -> tuple[float | None, dict[str, Any]]:
        """A training-free method's reduction time, where it acts: after the vision tower, inside the LLM's
        prefill, or both (vscan); with extra["grouping_stage"] naming where."""
        where, total, extra = [], None, {}
        gap = self._reducer_gap_ms(seen)
        if gap is not None:
            where.append("reduction after the vision tower (vision end -> projector start)")
            total = gap
        if self._profiler.selection_layers and self._selection:
            ms = self._clock.elapsed_ms
            inside = sum(ms(start, end) for start, end in self._selection)
            first = self._profiler.selection_layers[0]
            where.append(f"selection inside the LLM (prefill, pre-hooks of decoder layers {first}+; in prefill_ms)")
            extra["grouping_in_prefill_ms"] = inside
            extra["grouping_layers"] = list(self._profiler.selection_layers)
            total = inside + (total or 0.0)
        if where:
            extra["grouping_stage"] = f"{self.method}: " + " + ".join(where)
        return total, extra

    def _latency(self, seen: _Observed, end: Any) -> _Part:
        ms = self._clock.elapsed_ms
        extra: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        times = {
            f"{stage}_ms": sum(ms(s.start, s.end) for s in spans) if (spans := seen.stage_spans(stage)) else None
            for stage in VISION_STAGES
        }
        if times["grouping_ms"] is None:
            times["grouping_ms"], where = self._reduction_ms(seen)
            extra.update(where)
        if times["grouping_ms"] is None:
            reasons["grouping_ms"] = "no grouping layer or reducer ran"
        prefills, decodes = seen.prefills, seen.decodes
        times["prefill_ms"] = sum(ms(s.start, s.end) for s in prefills) if prefills else None
        times["ttft_ms"] = ms(self._start, prefills[0].end) if prefills else None
        if self.first_token_clock.mark is not None:
            extra["ttft_logits_processor_ms"] = ms(self._start, self.first_token_clock.mark)
        if decodes:
            ends = [s.end for s in seen.steps]
            decode_ms = sum(ms(ends[i - 1], ends[i]) for i, s in enumerate(seen.steps) if s.kind == "decode")
            extra["decode_forward_ms"] = sum(ms(s.start, s.end) for s in decodes)
        elif seen.decode_steps:  # compiled decode steps run without hooks: one span
            decode_ms = ms(seen.steps[-1].end, end)
            extra["decode_span"] = "prefill end -> request end (decode steps run compiled, without hooks)"
        elif prefills:
            decode_ms = 0.0
        else:
            decode_ms = None
            reasons["decode_ms"] = "no LLM forward observed"
        times["decode_ms"] = decode_ms
        times["decode_per_token_ms"] = (
            decode_ms / seen.decode_steps if decode_ms is not None and seen.decode_steps else None
        )
        if times["decode_per_token_ms"] is None:
            reasons["decode_per_token_ms"] = "no decode step (one output token)" if prefills else "no LLM forward"
        if not prefills:
            reasons["prefill_ms"] = "no LLM forward observed"
        stages_ms = {k: v for k, v in self._caller_ms.items() if k != "preprocess"}
        if stages_ms:
            extra["stages_ms"] = stages_ms
        times["preprocess_ms"] = self._caller_ms.get("preprocess")
        if times["preprocess_ms"] is None:
            reasons["preprocess_ms"] = "the caller timed no preprocess stage"
        times["total_ms"] = ms(self._start, end)
        return _Part(times, extra, reasons)

    def _flop_counts(self, seen: _Observed) -> _Part:
        """Analytic FLOPs from the shapes the hooks saw; counted ones (FlopCounterMode) when asked for."""
        shape, applied = self._profiler.shape, self._profiler.applied
        extra: dict[str, Any] = {"flops_convention": F.CONVENTION}
        if not self._profiler.family.hook_flops:  # a reducer at the LLM input: the hooks do not show what layer 0 sees
            reason = "family model: analytic FLOPs per budget by `vistog-bench profile --shape NAME --analytic`"
            return _Part({"flops": {}, "counted_flops": {}}, {}, {"flops": reason})
        pruning = {}
        if applied is not None and applied.fastv_layer is not None and seen.batch:
            # FastV: projected tokens are all P patches per image; from layer K on only `budget` per image stay.
            dropped = seen.projected * (1 - applied.budget / shape.num_patches) / seen.batch
            pruning = dict(pruned_after_layer=applied.fastv_layer, pruned_tokens=round(dropped))
            extra["fastv_pruning"] = pruning
        stage_formulas = {"vision": F.vision_flops, "grouping": F.grouping_flops, "projector": F.projector_flops}
        analytic = {
            stage: sum(formula(shape, *s.size) for s in seen.stage_spans(stage))
            for stage, formula in stage_formulas.items()
        }
        for kind, steps in (("prefill", seen.prefills), ("decode", seen.decodes)):
            analytic[kind] = sum(
                F.llm_flops(shape, s.batch, s.new_tokens, s.kv_length, s.logits_tokens, **pruning) for s in steps
            )
        if not seen.decodes and seen.decode_steps and seen.prompt_tokens is not None:
            analytic["decode"] = F.decode_flops(shape, seen.batch, seen.prompt_tokens, seen.decode_steps + 1)
        analytic["total"] = sum(analytic.values())
        counted: dict[str, float] = {}
        if self._counter is not None:
            counted = {stage: sum(s.flops for s in seen.stage_spans(stage)) for stage in VISION_STAGES}
            counted["prefill"] = sum(s.flops for s in seen.prefills)
            counted["decode"] = sum(s.flops for s in seen.decodes)
            counted["total"] = float(self._counter.get_total_flops())
            extra["flops_mismatch"] = mismatches(analytic, counted, MISMATCH_TOLERANCE)
        return _Part({"flops": analytic, "counted_flops": counted}, extra, {})

    def _memory(self) -> _Part:
        """Peak allocator bytes per stage (CUDA) and the process's peak RSS over the request."""
        extra: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        peaks: dict[str, int] = {}
        if self._peaks is not None:
            peaks = self._peaks.close()
        else:
            reasons["peak_memory_bytes"] = f"no CUDA allocator on {self._profiler.device.type}; see peak_rss_bytes"
        rss = peak_rss_bytes()
        if rss is None:
            reasons["peak_rss_bytes"] = "no /proc/self/status (not Linux)"
        elif not self._rss_reset:
            extra["peak_rss_scope"] = "process lifetime (/proc/self/clear_refs not writable)"
        return _Part({"peak_memory_bytes": peaks, "peak_rss_bytes": rss}, extra, reasons)

    def _kv_cache(self, seen: _Observed) -> _Part:
        """KV-cache bytes: measured from the generate's cache where it is visible, else computed from the shape."""
        computed = None
        if seen.steps:
            kv_tokens = seen.steps[-1].kv_length + (seen.decode_steps if not seen.decodes else 0)
            computed = kv_cache_bytes(self._profiler.shape, seen.batch, kv_tokens, self._profiler.element_bytes)
        measured = measured_cache_bytes(self._cache) if self._cache is not None else None
        kv_bytes = measured if measured is not None else computed
        reasons = {"kv_cache_bytes": "no LLM forward observed"} if kv_bytes is None else {}
        extra = {"kv_cache_bytes_computed": computed, "kv_cache_bytes_measured": measured}
        return _Part({"kv_cache_bytes": kv_bytes}, extra, reasons)

    def _energy(self, energy_end: int | None) -> _Part:
        """Joules from NVML's total-energy counter, read when the request opened and after it closed."""
        if self._energy_start is None or energy_end is None:
            reason = self._profiler.energy.reason or "NVML energy counter not readable"
            return _Part({"energy_j": None}, {}, {"energy_j": reason})
        return _Part({"energy_j": (energy_end - self._energy_start) / 1e3}, {}, {})


class RequestProfiler:
    """Stage profiler for a LLaVA / VisToG model, or a LLaVA-NeXT / OneVision / Qwen2.5-VL one (its LLM stages and
    encoder; no analytic FLOPs: see `hooks.stage_modules`). `attached()` installs the hooks, `request(...)` profiles
    one request. Hooks outside a request cost one attribute check."""

    def __init__(
        self, model: nn.Module, *, device: torch.device | str | None = None, path: str = "eager", applied=None
    ):
        """`applied`: what `vistog_bench.reducers.applied_method(model)` returned when the caller set the model up
        (None: stock or VisToG); it names a training-free reducer's stage and FastV's pruning in the FLOPs."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        parameter = next(model.parameters())
        self.model = model
        self.applied = applied
        self.device = torch.device(device) if device is not None else parameter.device
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.path = path
        self.clock = make_clock(self.device)
        # The model's family (model.families): where the hooks do not show the FLOPs, the LLM's sizes only (its
        # analytic FLOPs come from `profile --analytic`)
        self.family = family_of_model(model)
        self.shape = F.ArchShape.from_config(model.config) if self.family.hook_flops else F.llm_shape(model.config)
        self.dtype_name = dtype_name(parameter.dtype)
        self.element_bytes = parameter.element_size()
        self.weight_bytes = module_bytes(model)
        self.energy = EnergyMeter(self.device)
        # (read, reset) of the allocator's peak; None: no device allocator (CPU: peak RSS only)
        self.allocator = cuda_allocator(self.device) if self.device.type == "cuda" else None
        self.selection_layers: tuple[int, ...] = ()  # decoder layers whose method pre-hooks are timed (attached)
        self._records: list[ProfileRecord] = []
        self._active: Request | None = None
        self._attached = False

    def take_records(self) -> list[ProfileRecord]:
        """The records of every request closed since the last call (the profiler keeps them until then)."""
        records, self._records = self._records, []
        return records

    # observer interface: forwards to the open request, if any
    def enter(self, stage, module, args, kwargs) -> None:
        if self._active is not None:
            self._active.enter(stage, module, args, kwargs)

    def exit(self, stage, module, output) -> None:
        if self._active is not None:
            self._active.exit(stage, module, output)

    def enter_selection(self) -> None:
        if self._active is not None:
            self._active.enter_selection()

    def exit_selection(self) -> None:
        if self._active is not None:
            self._active.exit_selection()

    @property
    def reduces_after_vision(self) -> bool:
        """The applied method has a reducer between the vision tower and the projector (fewer placeholders per
        image than patches: every training-free method but the ones that select inside the LLM)."""
        applied = self.applied
        return applied is not None and applied.training_free and applied.tokens_per_image < _patches(self.model)

    def _selects_in_llm(self) -> bool:
        """The applied method drops tokens between decoder layers or at layer 0 (its hooks sit on those layers)."""
        applied = self.applied
        if applied is None or not applied.training_free or not applied.layer_tokens:
            return False
        return applied.llm_input_tokens != applied.tokens_per_image or len(set(applied.layer_tokens)) > 1

    def _selection_hooks(self) -> list:
        """On each decoder layer that carries the method's forward pre-hooks: one pre-hook put first (the hooks
        start) and one on the layer's first module, `input_layernorm` (they are done). Compiled regions skip them."""
        if not self._selects_in_llm():
            return []
        is_compiling = torch.compiler.is_compiling
        handles, layers = [], []

        def enter(*_):
            if not is_compiling():
                self.enter_selection()

        def leave(*_):
            if not is_compiling():
                self.exit_selection()

        for index, layer in enumerate(getattr(stage_modules(self.model)["llm"], "layers", ())):
            norm = getattr(layer, "input_layernorm", None)
            if norm is None or not layer._forward_pre_hooks:  # torch's registry of the layer's pre-hooks
                continue
            handles.append(layer.register_forward_pre_hook(enter, prepend=True))
            handles.append(norm.register_forward_pre_hook(leave))
            layers.append(index)
        self.selection_layers = tuple(layers)
        return handles

    @contextmanager
    def attached(self) -> Iterator[RequestProfiler]:
        """Install the stage hooks for the duration of the block; they are all removed on exit, errors included."""
        if self._attached:
            raise RuntimeError("this profiler is already attached")
        with stage_hooks(self.model, self):
            handles = self._selection_hooks()
            self._attached = True
            try:
                yield self
            finally:
                for handle in handles:
                    handle.remove()
                self.selection_layers = ()
                self._attached = False
                self._active = None

    @contextmanager
    def request(
        self,
        *,
        method: str,
        budget: int,
        batch_size: int,
        task: str | None = None,
        count_flops: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Iterator[Request]:
        """Profile one request (one generate). `count_flops=True` also runs FlopCounterMode over it (slow: for
        controlled runs, not for timing). The record is built after the block, with one device synchronisation."""
        if not self._attached:
            raise RuntimeError("attach the profiler first: `with profiler.attached(): ...`")
        if self._active is not None:
            raise RuntimeError("a request is already open on this profiler")
        req = Request(
            self, method=method, budget=budget, batch_size=batch_size, task=task, count_flops=count_flops, extra=extra
        )
        self._active = req
        req._open()
        try:
            yield req
        except BaseException:
            req._abandon()
            raise
        else:
            req._close()
            self._records.append(req.record)
        finally:
            self._active = None


def _patches(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "num_patches", 0) or 0


__all__ = ["RequestProfiler", "Request", "FirstTokenClock", "AllocatorPeaks", "cuda_allocator", "PATHS"]
