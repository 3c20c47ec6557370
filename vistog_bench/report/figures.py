"""Report figures (matplotlib, Agg canvas, no pyplot state): each saved as PNG and SVG with its provenance printed
under the axes.

- retention_vs_speedup: one line per method across its budgets, the Pareto frontier of the measured points, and
  reported points where a reference file gives both retention and speedup. A speedup's bootstrap interval is a
  horizontal bar; a flagged (uncertain) speedup is a hollow marker.
- accuracy_vs_tokens: one panel per task, score against visual tokens, reported points of the same benchmark.
- stage_breakdown: stacked bars of stage milliseconds per method@budget.
- flops_vs_latency: measured prefill time against prefill FLOPs, with the line time would follow if it scaled with
  FLOPs from the full budget (where points leave the line, FLOPs stop predicting time).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure

from ..analysis import CONFIDENCE, CV_THRESHOLD, FULL_BUDGET_METHOD
from ..results import STAGES, atomic_file
from .data import ReportData, Row
from .metrics import benchmark_family
from .reference import ReferenceSet

FIGURE_NAMES = ("retention_vs_speedup", "accuracy_vs_tokens", "stage_breakdown", "flops_vs_latency")
STAGE_COLORS = {
    "preprocess": "#bbbbbb",
    "vision": "#4c72b0",
    "grouping": "#dd8452",
    "projector": "#8172b3",
    "prefill": "#55a868",
    "decode": "#c44e52",
}
RC = {"svg.hashsalt": "vistog-bench", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}
FOOTER_CHARS_PER_IN = 19  # 6 pt text
FOOTER_LINE_IN = 0.13


def _series_names(rows: list[Row], *runs_of) -> dict[int, str]:
    """Row index -> series name: the method, with the run ids its numbers come from when one method's rows come from
    more than one run (so lines never join numbers from different runs)."""

    def runs(row: Row) -> tuple:
        return tuple(getattr(row, name) for name in runs_of)

    per_method: dict[str, set] = {}
    for row in rows:
        per_method.setdefault(row.method, set()).add(runs(row))
    names = {}
    for index, row in enumerate(rows):
        ids = [r for r in dict.fromkeys(runs(row)) if r]
        several = len(per_method[row.method]) > 1
        names[index] = row.method + (f" [{', '.join(ids)}]" if several and ids else "")
    return names


def _colors(names) -> dict[str, str]:
    """One colour per series name, the same in every panel."""
    cycle = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
    ]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(sorted(set(names)))}


def _new_figure(
    width: float, height: float, footer: list[str], ncols: int = 1, nrows: int = 1, xlabel_in: float = 0.55
):
    """A figure whose bottom holds the provenance footer; `xlabel_in`: room for the x tick labels and axis label."""
    wrapped = [w for line in footer for w in textwrap.wrap(line, int(width * FOOTER_CHARS_PER_IN))]
    footer_in = 0.25 + FOOTER_LINE_IN * len(wrapped)
    height += xlabel_in - 0.55
    fig = Figure(figsize=(width, height + footer_in))
    fig.subplots_adjust(
        bottom=(footer_in + xlabel_in) / (height + footer_in),
        top=1 - 0.45 / (height + footer_in),
        left=0.8 / width,
        right=1 - 0.2 / width,
        wspace=0.35,
        hspace=0.6,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.text(0.01, 0.01, "\n".join(wrapped), fontsize=6, va="bottom", ha="left", color="#444444")
    return fig, axes


def _no_data(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(
        0.5, 0.5, message, ha="center", va="center", fontsize=10, color="#666666", wrap=True, transform=ax.transAxes
    )


def retention_vs_speedup(data: ReportData, reference: ReferenceSet | None, footer: list[str]) -> Figure:
    fig, axes = _new_figure(6.4, 4.2, footer)
    ax = axes[0, 0]
    series: dict[str, list[Row]] = {}
    both = [r for r in data.rows if r.avg_retention is not None and r.speedup is not None]
    names = _series_names(both, "accuracy_run", "efficiency_run")
    for index, row in enumerate(both):
        series.setdefault(names[index], []).append(row)
    colors = _colors(series)
    ref_points = [r for r in (reference.rows if reference else ()) if r.speedup is not None and r.retention is not None]
    if not series and not ref_points:
        _no_data(
            ax,
            "no method@budget has both an average retention and a speedup\n"
            "(needs metrics.json cells and profile records, with a full-budget cell for each)",
        )
        return fig
    points = []
    for name, rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r.speedup.value)
        xs, ys = [r.speedup.value for r in rows], [r.avg_retention for r in rows]
        points += list(zip(xs, ys, strict=True))
        ax.plot(xs, ys, marker="o", label=name, color=colors[name])
        for r in rows:
            _speedup_uncertainty(ax, r, colors[name])
            ax.annotate(
                str(r.budget),
                (r.speedup.value, r.avg_retention),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=colors[name],
            )
    if any(r.speedup.flagged for r in both):
        ax.text(
            0.01,
            0.01,
            f"hollow: speedup uncertain (CV > {CV_THRESHOLD:.0%} or its {CONFIDENCE:.0%} interval "
            "includes 1); bars: that interval",
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=6,
            color="#444444",
        )
    frontier = pareto_frontier(points)
    if len(frontier) > 1:
        ax.plot(
            [p[0] for p in frontier],
            [p[1] for p in frontier],
            ls="--",
            color="black",
            lw=1,
            alpha=0.6,
            label="Pareto frontier (measured)",
            zorder=0,
        )
    for ref in ref_points:
        ax.scatter([ref.speedup], [ref.retention], marker="D", facecolors="none", edgecolors="gray")
        ax.annotate(
            f"{ref.method}@{ref.budget_label} (reported)",
            (ref.speedup, ref.retention),
            textcoords="offset points",
            xytext=(4, -8),
            fontsize=6,
            color="gray",
        )
    if not ref_points:
        ax.text(
            0.99,
            0.01,
            "no reference gives both retention and speedup",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6,
            color="gray",
        )
    ax.set_xlabel("speedup × (full-budget E2E / E2E, same run)")
    ax.set_ylabel("average retention (%)")
    ax.set_title("Retention vs speedup")
    ax.legend(fontsize=7)
    return fig


def _speedup_uncertainty(ax, row: Row, color: str) -> None:
    """The speedup's bootstrap interval as a horizontal error bar; a hollow marker over a flagged point."""
    ratio = row.speedup
    if ratio.low is not None:
        ax.errorbar(
            [ratio.value],
            [row.avg_retention],
            xerr=[[ratio.value - ratio.low], [ratio.high - ratio.value]],
            fmt="none",
            ecolor=color,
            elinewidth=1,
            capsize=2,
            alpha=0.8,
        )
    if ratio.flagged:
        ax.scatter([ratio.value], [row.avg_retention], s=36, facecolors="white", edgecolors=color, zorder=3)


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both speedup and retention, by increasing speedup."""
    frontier = []
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return sorted(frontier)


def accuracy_vs_tokens(data: ReportData, reference: ReferenceSet | None, footer: list[str]) -> Figure:
    tasks = data.tasks
    ncols = min(3, max(1, len(tasks)))
    nrows = max(1, -(-len(tasks) // ncols))
    fig, axes = _new_figure(3.4 * ncols, 2.8 * nrows, footer, ncols=ncols, nrows=nrows)
    flat = list(axes.flat)
    if not tasks:
        _no_data(flat[0], "no metrics.json cells")
        return fig
    for ax in flat[len(tasks) :]:
        ax.set_axis_off()
    scored = [r for r in data.rows if r.accuracy_run]
    names = _series_names(scored, "accuracy_run")
    colors = _colors(names.values())
    for ax, task in zip(flat, tasks, strict=False):
        series: dict[str, list[tuple[int, float]]] = {}
        unit = None
        for index, row in enumerate(scored):
            score = row.scores.get(task)
            if score is not None and score.status == "ok":
                series.setdefault(names[index], []).append((row.visual_tokens, score.value))
                unit = unit or score.headline.unit
        budgets = sorted({x for pts in series.values() for x, _ in pts})
        for name, pts in sorted(series.items()):
            pts.sort()
            if len(pts) == 1 and name.startswith(FULL_BUDGET_METHOD):
                ax.axhline(pts[0][1], ls="--", color="black", lw=1, label=f"{name}@{pts[0][0]} (full)")
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colors[name])
        family = benchmark_family(task, reference.benchmarks) if reference else None
        if family:
            refs = [r for r in reference.rows if family in r.scores and r.visual_tokens is not None]
            if refs:
                ax.scatter(
                    [r.visual_tokens for r in refs],
                    [r.scores[family] for r in refs],
                    marker="D",
                    facecolors="none",
                    edgecolors="gray",
                    s=14,
                    label="reported (papers)",
                )
                budgets = sorted(set(budgets) | {r.visual_tokens for r in refs})
        if budgets and min(budgets) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets)
            ax.set_xticklabels([str(b) for b in budgets], fontsize=7)
        ax.set_title(task)
        ax.set_xlabel("visual tokens")
        ax.set_ylabel(unit or "score")
        if series:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no ok cells", transform=ax.transAxes, ha="center", color="#666666")
    return fig


def stage_breakdown(data: ReportData, footer: list[str]) -> Figure:
    rows = [r for r in data.rows if r.efficiency is not None]
    longest = max((len(r.label) for r in rows), default=0)
    fig, axes = _new_figure(max(5.0, 0.55 * len(rows) + 2.0), 4.0, footer, xlabel_in=0.3 + 0.045 * longest)
    ax = axes[0, 0]
    if not rows:
        _no_data(ax, "no profile records")
        return fig
    labels = [r.label for r in rows]
    bottoms = [0.0] * len(rows)
    for stage in STAGES:
        values = [r.efficiency.stage_ms.get(stage) or 0.0 for r in rows]
        if not any(values):
            continue
        ax.bar(labels, values, bottom=bottoms, label=stage, color=STAGE_COLORS.get(stage))
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_axisbelow(True)
    ax.set_ylabel("milliseconds per request")
    ax.set_title("Where the time goes, by stage")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.legend(fontsize=7)
    return fig


def flops_vs_latency(data: ReportData, footer: list[str]) -> Figure:
    fig, axes = _new_figure(6.4, 4.2, footer)
    ax = axes[0, 0]
    rows = [
        r for r in data.rows if r.efficiency and r.efficiency.prefill_tflops and r.efficiency.stage_ms.get("prefill")
    ]
    if not rows:
        _no_data(ax, "no profile record has both prefill FLOPs and a prefill time")
        return fig
    by_method: dict[str, list[Row]] = {}
    names = _series_names(rows, "efficiency_run")
    for index, r in enumerate(rows):
        by_method.setdefault(names[index], []).append(r)
    for name, group in sorted(by_method.items()):
        xs = [r.efficiency.prefill_tflops for r in group]
        ys = [r.efficiency.stage_ms["prefill"] for r in group]
        points = ax.scatter(xs, ys, label=name)
        for r, x, y in zip(group, xs, ys, strict=True):
            ax.annotate(
                str(r.budget),
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=points.get_facecolor()[0],
            )
    top = max(r.efficiency.prefill_tflops for r in rows) * 1.05
    runs = list(dict.fromkeys(r.efficiency_run for r in rows))
    for run_id in runs:  # one reference line per run: never scale one device's time by another's FLOPs
        own = [r for r in rows if r.efficiency_run == run_id]
        full = max(own, key=lambda r: (r.full_budget, r.budget, r.efficiency.prefill_tflops))
        f_full, t_full = full.efficiency.prefill_tflops, full.efficiency.stage_ms["prefill"]
        ax.plot(
            [0, top],
            [0, t_full * top / f_full],
            ls="--",
            color="gray",
            lw=1,
            label=f"time ∝ FLOPs through {full.method}@{full.budget}" + (f" [{run_id}]" if len(runs) > 1 else ""),
        )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("prefill TFLOPs (analytic)")
    ax.set_ylabel("measured prefill (ms)")
    ax.set_title("FLOPs vs measured latency")
    ax.legend(fontsize=7)
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with rc_context(RC):
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = out_dir / f"{name}.{ext}"
            with atomic_file(path) as handle:  # a full disk leaves no torn PNG / SVG
                fig.savefig(handle, format=ext, dpi=150, metadata=meta)
            paths.append(path)
    return paths


def render_figures(data: ReportData, reference: ReferenceSet | None, footer: list[str]) -> dict[str, Figure]:
    with rc_context(RC):
        return {
            "retention_vs_speedup": retention_vs_speedup(data, reference, footer),
            "accuracy_vs_tokens": accuracy_vs_tokens(data, reference, footer),
            "stage_breakdown": stage_breakdown(data, footer),
            "flops_vs_latency": flops_vs_latency(data, footer),
        }
