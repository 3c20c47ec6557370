"""lmms-eval's results of one task -> the run's records: the cell (metric values, stderr, samples scored and failed)
and the sample lines (lmms-eval's logged samples with what the adapter served for each).
"""

from __future__ import annotations

import math

from ..results import STATUS_OK, CellResult, failed_status

# What the adapter's sample log adds to each sample line (VisToGLMM.take_sample_log); on a family model also each
# image's tokens as received by the LLM and as the processor expanded them (lists, one entry per image).
SERVED_KEYS = (
    "prompt",
    "image_placeholders",
    "tokens_per_placeholder",
    "video_placeholders",
    "video_frames",
    "failure",
    "visual_tokens",
    "visual_tokens_unreduced",
)


def cell_from_lmms_results(
    task: str, method: str, budget: int, results: dict, elapsed_s: float, failures: list[str] = ()
) -> CellResult:
    """lmms-eval's `results["results"][task]`: `"metric,filter"` values with `"metric_stderr,filter"` beside them.
    `n_samples` counts the samples scored (the logged ones, when samples were logged); a cell with none is failed.
    `failures`: the reasons of the samples that failed alone (left out of the scoring)."""
    n_failed = len(failures)
    values = results.get("results", {}).get(task)
    if values is None:
        return CellResult(
            task, method, budget, failed_status("lmms-eval returned no results for this task"), n_failed=n_failed
        )
    metrics, stderr = {}, {}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue  # aliases, and NaN for a sub-metric no sample of this split has (e.g. a question type)
        metric, _, filter_name = key.partition(",")
        if "_stderr" in metric:  # "exact_match_stderr,none", or with the estimator named: "..._stderr_clt,none"
            stderr[f"{metric.split('_stderr')[0]},{filter_name}"] = float(value)
        else:
            metrics[key] = float(value)
    stderr = {key: value for key, value in stderr.items() if key in metrics}
    if task in results.get("samples", {}):
        n_samples = len(results["samples"][task])
    else:
        n_samples = results.get("n-samples", {}).get(task, {}).get("effective", 0) - n_failed
    status = (
        STATUS_OK
        if n_samples > 0
        else failed_status(
            "no sample was scored" + (f": all {n_failed} failed, the first: {failures[0]}" if n_failed else "")
        )
    )
    return CellResult(task, method, budget, status, metrics, stderr, int(n_samples), round(elapsed_s, 3), n_failed)


def sample_lines(samples: list[dict], served: list[dict]) -> list[dict]:
    """lmms-eval's logged samples, without the documents (they can hold images), each with what the adapter served
    for it (prompt, image placeholders, tokens per placeholder, a family's received and unreduced counts; merged by
    doc_id), then one line per failed sample, by doc_id."""
    keep = ("doc_id", "target", "arguments", "resps", "filtered_resps", "input", "token_counts")
    by_doc: dict = {}
    for entry in served:
        by_doc.setdefault(entry.get("doc_id"), {}).update({k: entry[k] for k in SERVED_KEYS if k in entry})
    lines = []
    for sample in samples:
        line = {k: sample[k] for k in keep if k in sample}
        if "arguments" in line:
            line["arguments"] = [a for a in line["arguments"] if isinstance(a, (str, int, float, dict, list))]
        line.update(
            {k: v for k, v in sample.items() if k not in line and k != "doc" and isinstance(v, (int, float, str))}
        )
        line.update(by_doc.pop(sample.get("doc_id"), {}))
        lines.append(line)
    failed = sorted((doc_id, entry) for doc_id, entry in by_doc.items() if "failure" in entry)  # whoever served it
    lines += [{"doc_id": doc_id, **entry} for doc_id, entry in failed]
    return lines


def token_means(lines: list[dict]) -> dict[str, float]:
    """`mean_visual_tokens` and `mean_visual_tokens_unreduced` (CellResult fields) per image over the sample lines
    that carry both counts and did not fail; empty when none does (LLaVA-1.5 lines carry neither)."""
    served = [
        line
        for line in lines
        if "failure" not in line and "visual_tokens" in line and "visual_tokens_unreduced" in line
    ]
    received = [n for line in served for n in line["visual_tokens"]]
    unreduced = [n for line in served for n in line["visual_tokens_unreduced"]]
    if not received or len(received) != len(unreduced):
        return {}
    return {
        "mean_visual_tokens": sum(received) / len(received),
        "mean_visual_tokens_unreduced": sum(unreduced) / len(unreduced),
    }


__all__ = ["SERVED_KEYS", "cell_from_lmms_results", "sample_lines", "token_means"]
