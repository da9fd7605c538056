"""The evaluate step's reports, rendered from its nested metrics (``metrics.json``).

``report.md`` (improvement per pool with each difference's significance, the lexical
baselines, separation, and a before/after table) and ``report.html`` (the same tables and a
grouped bar chart per pool, self-contained for the Kubeflow UI). Everything shown is read
from the metrics dictionary, so a report can be re-rendered from a saved ``metrics.json``.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

POOL_SECTIONS: tuple[str, ...] = ("test_pool", "global_pool")
POOL_TITLES = {"test_pool": "Test pool", "global_pool": "Global pool"}
SYSTEM_TITLES = {"base": "Base", "finetuned": "Fine-tuned", "bm25": "BM25", "hybrid": "Hybrid (BM25 + fine-tuned)"}
_CHART_COLORS = {"base": "#9aa5b1", "finetuned": "#2f6fde", "bm25": "#e0a030", "hybrid": "#3a9d5d"}
_SEPARATION_LABELS = {"separation": "separation", "mean_cos_positive": "mean cos(query, pos)",
                      "mean_cos_negative": "mean cos(query, neg)"}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_delta(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _fmt_relative(base: float | None, finetuned: float | None) -> str:
    if base is None or finetuned is None or base == 0:
        return "n/a"
    return f"{(finetuned - base) / abs(base) * 100:+.1f}%"


def _delta(base: float | None, finetuned: float | None) -> float | None:
    return None if base is None or finetuned is None else finetuned - base


def _lexical(metrics: dict) -> bool:
    return "bm25" in metrics and "hybrid" in metrics


def _systems(metrics: dict) -> list[str]:
    return ["base", "finetuned"] + (["bm25", "hybrid"] if _lexical(metrics) else [])


def _metric_names(metrics: dict) -> list[str]:
    return [f"{metric}@{k}" for metric in ("recall", "mrr") for k in metrics["ks"]]


def _level(metrics: dict) -> float:
    return metrics["settings"]["significance"]["level"]


def _verdict(tested: dict, level: float) -> str:
    return "significant" if tested["significant"] else f"not significant (p ≥ {level:g})"


def _improvement_header(metrics: dict) -> list[str]:
    confidence = metrics["settings"]["significance"]["confidence"]
    header = ["Metric", "Base", "Fine-tuned", "Δ", "Δ%", f"{confidence:.0%} CI of Δ", "p", "Significance"]
    return header + (["BM25", "Hybrid"] if _lexical(metrics) else [])


def _improvement_rows(metrics: dict, section: str) -> list[list[str]]:
    base, finetuned = metrics["base"][section], metrics["finetuned"][section]
    rows = []
    for name in _metric_names(metrics):
        tested = metrics["significance"][section][name]
        row = [name, _fmt(base[name]), _fmt(finetuned[name]), _fmt_delta(_delta(base[name], finetuned[name])),
               _fmt_relative(base[name], finetuned[name]),
               f"[{tested['ci_low']:+.4f}, {tested['ci_high']:+.4f}]", f"{tested['p_value']:.4f}",
               _verdict(tested, _level(metrics))]
        if _lexical(metrics):
            row += [_fmt(metrics["bm25"][section][name]), _fmt(metrics["hybrid"][section][name])]
        rows.append(row)
    return rows


_SEPARATION_HEADER = ["Metric", "Base", "Fine-tuned", "Δ", "Δ%"]


def _separation_rows(metrics: dict) -> list[list[str]]:
    base, finetuned = metrics["base"]["separation"], metrics["finetuned"]["separation"]
    return [[_SEPARATION_LABELS.get(name, name), _fmt(base[name]), _fmt(finetuned[name]),
             _fmt_delta(_delta(base[name], finetuned[name])), _fmt_relative(base[name], finetuned[name])]
            for name in base]


def _detail_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    names = _metric_names(metrics)
    header = (["Model"] + [f"{POOL_TITLES[pool].split()[0].lower()} {name}" for pool in POOL_SECTIONS
                           for name in names] + ["separation"])
    rows = []
    for system in _systems(metrics):
        title = SYSTEM_TITLES[system]
        if system in metrics["models"]:
            title += f" ({metrics['models'][system]})"
        values = [metrics[system][pool][name] for pool in POOL_SECTIONS for name in names]
        separation = metrics[system].get("separation", {}).get("separation")
        rows.append([title] + [_fmt(v) for v in values] + [_fmt(separation)])
    return header, rows


def _pool_size(metrics: dict, section: str) -> int:
    return metrics["counts"]["test_pool_passages" if section == "test_pool" else "global_pool_passages"]


def _summary_lines(metrics: dict) -> list[str]:
    counts = metrics["counts"]
    significance = metrics["settings"]["significance"]
    lines = [
        f"- Base model: `{metrics['models']['base']}`",
        f"- Fine-tuned model: `{metrics['models']['finetuned']}`",
        f"- Test queries: {counts['queries']}; test pool: {counts['test_pool_passages']} passages "
        f"(the unique positives of the test rows); global pool: {counts['global_pool_passages']} passages "
        f"(the whole corpus)",
        f"- Rows with hard negatives (separation): {counts['rows_with_negatives']}",
        "- recall@k: share of queries with any positive in the top k; mrr@k: mean reciprocal rank of the "
        "first positive (0 beyond k); exact inner-product search over normalized vectors",
        "- separation: mean cos(query, positive) − mean cos(query, hard negative)",
        f"- Significance of Δ (fine-tuned − base): {significance['test']}, {significance['permutations']:,} "
        f"random assignments (exact when few queries differ), seed {significance['seed']}; "
        f"{significance['confidence']:.0%} interval: {significance['interval']}, "
        f"{significance['bootstrap_samples']:,} resamples. Level {significance['level']:g}: a difference with "
        f"p ≥ {significance['level']:g} is not significant",
    ]
    lexical = metrics["settings"].get("lexical")
    if lexical:
        lines.append(
            f"- BM25: Lucene BM25 (k1 {lexical['bm25_k1']:g}, b {lexical['bm25_b']:g}) over "
            + ("character unigrams and bigrams" if lexical["bm25_tokenizer"] == "cjk-bigram" else "lower-cased words")
            + f"; Hybrid: reciprocal-rank fusion (k {lexical['fusion_k']}) of BM25 and the fine-tuned model, "
            f"top {lexical['fusion_depth']} of each")
    return lines


def _headline(metrics: dict) -> str:
    """One sentence on the global pool's recall@1, the figure a user looks at first."""
    name = f"recall@{metrics['ks'][0]}"
    tested = metrics["significance"]["global_pool"][name]
    base, finetuned = metrics["base"]["global_pool"][name], metrics["finetuned"]["global_pool"][name]
    sentence = (f"Global-pool {name}: {base:.4f} → {finetuned:.4f} ({tested['delta']:+.4f}, "
                f"{metrics['settings']['significance']['confidence']:.0%} CI [{tested['ci_low']:+.4f}, "
                f"{tested['ci_high']:+.4f}], p = {tested['p_value']:.4f}: {_verdict(tested, _level(metrics))})")
    if _lexical(metrics):
        sentence += (f"; BM25 {metrics['bm25']['global_pool'][name]:.4f}, "
                     f"hybrid {metrics['hybrid']['global_pool'][name]:.4f}")
    return sentence + "."


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_markdown_cell(c) for c in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown_report(metrics: dict) -> str:
    """The Markdown report: headline, improvement per pool, separation, before/after table."""
    parts = ["# Evaluation: base vs fine-tuned", "", *_summary_lines(metrics), "", f"**{_headline(metrics)}**",
             "", "## Improvement per pool", ""]
    for section in POOL_SECTIONS:
        parts += [f"### {POOL_TITLES[section]} ({_pool_size(metrics, section)} passages)", "",
                  _markdown_table(_improvement_header(metrics), _improvement_rows(metrics, section)), ""]
    parts += ["### Separation", "", _markdown_table(_SEPARATION_HEADER, _separation_rows(metrics)), "",
              "## Before / after", ""]
    header, rows = _detail_table(metrics)
    parts += [_markdown_table(header, rows), ""]
    return "\n".join(parts)


def _bar_chart_png(metrics: dict, section: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _metric_names(metrics)
    systems = _systems(metrics)
    figure = Figure(figsize=(max(5.0, 0.4 * len(systems) * len(names) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(names))
    width = 0.8 / len(systems)
    for number, system in enumerate(systems):
        values = [metrics[system][section][n] for n in names]
        offset = (number - (len(systems) - 1) / 2) * width
        bars = axes.bar(positions + offset, values, width, label=SYSTEM_TITLES[system], color=_CHART_COLORS[system])
        axes.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=6, padding=1, rotation=90)
    axes.set_xticks(positions, names)
    axes.set_ylim(0, 1.2)
    axes.set_title(f"{POOL_TITLES[section]} ({_pool_size(metrics, section)} passages)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(systems), fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", sans-serif; margin: 24px; color: #1f2933; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #d3d8de; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f3f6; }
img { max-width: 100%; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
"""


def render_html_report(metrics: dict) -> str:
    """A self-contained HTML report (charts inlined as base64 PNG) for the Kubeflow UI."""
    summary = "".join(f"<li>{html.escape(line[2:]).replace('`', '')}</li>" for line in _summary_lines(metrics))
    charts = "".join(
        f'<div><img alt="{html.escape(POOL_TITLES[section])}" src="data:image/png;base64,'
        f'{base64.b64encode(_bar_chart_png(metrics, section)).decode("ascii")}"></div>' for section in POOL_SECTIONS)
    sections = []
    for section in POOL_SECTIONS:
        sections.append(f"<h3>{html.escape(POOL_TITLES[section])} ({_pool_size(metrics, section)} passages)</h3>"
                        + _html_table(_improvement_header(metrics), _improvement_rows(metrics, section)))
    sections.append("<h3>Separation</h3>" + _html_table(_SEPARATION_HEADER, _separation_rows(metrics)))
    header, rows = _detail_table(metrics)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>Evaluation: base vs fine-tuned</title>"
        f"<style>{_HTML_STYLE}</style></head><body>"
        "<h1>Evaluation: base vs fine-tuned</h1>"
        f"<ul>{summary}</ul><p><strong>{html.escape(_headline(metrics))}</strong></p>"
        f"<h2>Before / after per pool</h2><div class=\"charts\">{charts}</div>"
        "<h2>Improvement per pool</h2>" + "".join(sections)
        + "<h2>Before / after</h2>" + _html_table(header, rows)
        + "</body></html>\n"
    )
