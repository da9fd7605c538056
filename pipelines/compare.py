"""Several runs side by side: the parameters that differ, then every metric, the best marked.

A run is named by one of:

* a local run folder (``runs/<timestamp>/`` from ``searchtune run --local``), holding
  ``parameters.json`` and ``metrics.json``;
* an ``s3://`` run root: the same two files under a prefix, or a KFP run's root under
  the pipeline root (``<pipeline_root>/<pipeline name>/<run id>/``), where the evaluate
  step's ``metrics`` artifact holds the flat metrics;
* a KFP run id (with ``--host``): the run's parameters come from the API, its metrics
  from that run's root in the artifact store (the API does not serve artifact content).

Metric names are the evaluate step's stable flat names (``global_recall_at_1_finetuned``,
``test_mrr_at_10_delta``, ...), the same ones KFP's own *Compare runs* view lines up.
Metrics a run does not have show as ``—``; metrics this module does not know (p-values,
confidence bounds, baselines) are listed after the known ones, unmarked, since which way
is better is theirs to say.

Output: a terminal table, and on request Markdown and a self-contained HTML page with one
chart per headline metric (base and fine-tuned across runs).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from components.metric_names import POOLS, flat_metric_names
from components.object_store import describe_object, is_s3_uri, join_uri, list_objects, read_object

logger = logging.getLogger(__name__)

PARAMETERS_FILENAME = "parameters.json"
METRICS_FILENAME = "metrics.json"
# The evaluate step's task and metrics artifact, as the KFP launcher names them in the store.
EVALUATE_TASK = "evaluate-models"
METRICS_ARTIFACT = "metrics"
HEADLINE_METRICS = tuple(f"{pool}_{metric}" for pool in POOLS for metric in ("recall_at_1", "mrr_at_10"))
DEFAULT_BEST_BY = "global_mrr_at_10_finetuned"
# Higher is better for these; only they are marked.
_RANKED = re.compile(r"^((test|global)_(recall|mrr)_at_\d+|separation)_(finetuned|delta)$")
_RUN_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Pipeline parameters that are not about the experiment (the profile is a whole YAML file).
_HIDDEN_PARAMETERS = ("cluster_profile",)
_LONG_VALUE = 48


@dataclass
class RunRecord:
    """One run: where it came from, its parameters and its flat metrics."""

    label: str
    source: str
    parameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    state: str = ""


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunRecord, ...]
    parameter_rows: tuple[tuple[str, tuple[str, ...]], ...]
    metric_rows: tuple[tuple[str, tuple[float | None, ...], int | None], ...]
    best_by: str
    best_run: int | None


# --------------------------------------------------------------------------- loading runs


def _json(text: bytes | str, where: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return value


def _flat_metrics(values: dict, where: str) -> dict:
    """Numbers only: a flat ``metrics.json``, or a nested one reduced to nothing (refused)."""
    flat = {name: value for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if not flat:
        raise ValueError(f"{where}: holds no flat metrics (expected the evaluate step's metric names)")
    return flat


def load_local_run(folder: str | Path) -> RunRecord:
    folder = Path(folder)
    metrics_path = folder / METRICS_FILENAME
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: not found (a run folder from `searchtune run --local` has it)")
    parameters_path = folder / PARAMETERS_FILENAME
    parameters = (_json(parameters_path.read_text(encoding="utf-8"), str(parameters_path))
                  if parameters_path.is_file() else {})
    metrics = _flat_metrics(_json(metrics_path.read_text(encoding="utf-8"), str(metrics_path)), str(metrics_path))
    return RunRecord(label=folder.resolve().name, source=str(folder), parameters=parameters, metrics=metrics)


def _metrics_under_kfp_root(root: str) -> str | None:
    """The evaluate step's metrics artifact anywhere under a KFP run's root (layouts vary by version)."""
    candidates = [uri for uri in list_objects(root)
                  if uri.rstrip("/").endswith("/" + METRICS_ARTIFACT) and f"/{EVALUATE_TASK}/" in uri]
    if len(candidates) > 1:  # a retried step: the newest attempt's metrics, not the first name in order
        return max(candidates, key=lambda uri: (describe_object(uri)["last_modified"], uri))
    return candidates[0] if candidates else None


def load_s3_run(root: str) -> RunRecord:
    uris = set(list_objects(root))
    label = root.rstrip("/").rsplit("/", 1)[-1]
    metrics_uri = join_uri(root, METRICS_FILENAME)
    if metrics_uri in uris:
        parameters_uri = join_uri(root, PARAMETERS_FILENAME)
        parameters = _json(read_object(parameters_uri), parameters_uri) if parameters_uri in uris else {}
        return RunRecord(label=label, source=root, parameters=parameters,
                         metrics=_flat_metrics(_json(read_object(metrics_uri), metrics_uri), metrics_uri))
    found = _metrics_under_kfp_root(root)
    if not found:
        raise ValueError(f"{root}: no {METRICS_FILENAME} and no {EVALUATE_TASK} metrics artifact under it "
                         "(not a run root, or the run's evaluate step did not finish)")
    return RunRecord(label=label, source=root, metrics=_flat_metrics(_json(read_object(found), found), found))


def load_kfp_run(api, run_id: str, pipeline_root: str | None = None) -> RunRecord:
    """A KFP run: parameters and state from the API, metrics from its root in the store."""
    from pipelines.pipeline import PIPELINE_NAME
    from pipelines.submit import call_api

    run = call_api(f"reading run {run_id}", api.host, lambda: api.client.get_run(run_id))
    config = run.runtime_config
    parameters = dict((config.parameters if config else None) or {})
    spec_root = (run.pipeline_spec or {}).get("defaultPipelineRoot") if isinstance(run.pipeline_spec, dict) else None
    root = (config.pipeline_root if config else None) or pipeline_root or spec_root
    if not root:
        raise ValueError(f"run {run_id}: its pipeline root is unknown; give --pipeline-root or --profile")
    record = RunRecord(label=run.display_name or run_id, source=f"kfp:{run_id}", parameters=parameters,
                       state=str(run.state or ""))
    run_root = join_uri(root, PIPELINE_NAME, run_id)
    found = _metrics_under_kfp_root(run_root) if is_s3_uri(run_root) else None
    if not found:
        raise ValueError(f"run {run_id} ({str(run.state or 'unknown state').lower()}): no {EVALUATE_TASK} "
                         f"metrics artifact under {run_root}")
    record.metrics = _flat_metrics(_json(read_object(found), found), found)
    return record


def load_run(name: str, connect=None, pipeline_root: str | None = None) -> RunRecord:
    """A run from a local folder, an ``s3://`` run root, or a KFP run id."""
    if is_s3_uri(name):
        return load_s3_run(name)
    if Path(name).expanduser().is_dir():
        return load_local_run(Path(name).expanduser())
    if _RUN_ID.match(name):
        if connect is None:
            raise ValueError(f"{name}: looks like a KFP run id; give --host (or set KF_PIPELINES_ENDPOINT)")
        return load_kfp_run(connect(), name, pipeline_root)
    raise FileNotFoundError(f"{name}: not a run folder, an s3:// run root, or a KFP run id")


# --------------------------------------------------------------------------- the comparison


def _metric_order(names: set[str]) -> list[str]:
    known = flat_metric_names()
    ordered = [name for name in known if name in names]
    return ordered + sorted(names - set(known))


def _shown(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _LONG_VALUE else text[:_LONG_VALUE - 1] + "…"


def compare_runs(runs: list[RunRecord], best_by: str = DEFAULT_BEST_BY) -> Comparison:
    """Parameters that differ between the runs, every metric, and the best run per ranked metric."""
    if not runs:
        raise ValueError("give at least one run")
    names = sorted({name for run in runs for name in run.parameters} - set(_HIDDEN_PARAMETERS))
    parameter_rows = []
    for name in names:
        values = tuple(_shown(run.parameters[name]) if name in run.parameters else "—" for run in runs)
        if len(set(values)) > 1:
            parameter_rows.append((name, values))
    metric_rows = []
    for name in _metric_order({name for run in runs for name in run.metrics}):
        values = tuple(_number(run.metrics.get(name)) for run in runs)
        best = None
        present = [(value, index) for index, value in enumerate(values) if value is not None]
        if _RANKED.match(name) and len(present) > 1 and len({value for value, _ in present}) > 1:
            best = max(present, key=lambda item: item[0])[1]
        metric_rows.append((name, values, best))
    by_name = {name: best for name, _, best in metric_rows}
    if best_by not in by_name:
        best_by = next((name for name in (DEFAULT_BEST_BY, "global_recall_at_1_finetuned") if name in by_name), best_by)
    best_run = by_name.get(best_by)
    if best_run is None and len(runs) == 1 and best_by in by_name:
        best_run = 0
    return Comparison(runs=tuple(runs), parameter_rows=tuple(parameter_rows), metric_rows=tuple(metric_rows),
                      best_by=best_by, best_run=best_run)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _headers(comparison: Comparison) -> list[str]:
    return [run.label + (" (best)" if index == comparison.best_run else "")
            for index, run in enumerate(comparison.runs)]


def render_text(comparison: Comparison) -> str:
    """An aligned table for the terminal; ``*`` marks the best run of a ranked metric."""
    rows = [["", *_headers(comparison)]]
    if comparison.parameter_rows:
        rows.append(["parameters that differ", *[""] * len(comparison.runs)])
        rows += [[f"  {name}", *values] for name, values in comparison.parameter_rows]
    rows.append(["metrics", *[""] * len(comparison.runs)])
    for name, values, best in comparison.metric_rows:
        rows.append([f"  {name}", *[_fmt(v) + (" *" if i == best else "  ") for i, v in enumerate(values)]])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column])
                       for column, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"* best of the runs; best run overall by {comparison.best_by}"
                 + (f": {comparison.runs[comparison.best_run].label}" if comparison.best_run is not None else ": —"))
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(comparison: Comparison) -> str:
    runs = comparison.runs
    header = "| | " + " | ".join(_md(h) for h in _headers(comparison)) + " |"
    rule = "| --- |" + " ---: |" * len(runs)
    parts = [f"# searchtune: {len(runs)} runs compared", ""]
    parts += [f"- **{_md(run.label)}**: `{_md(run.source)}`" + (f" ({run.state.lower()})" if run.state else "")
              for run in runs]
    parts += ["", f"Best run by `{comparison.best_by}`: "
              + (f"**{_md(runs[comparison.best_run].label)}**" if comparison.best_run is not None else "—"), ""]
    if comparison.parameter_rows:
        parts += ["## Parameters that differ", "", header, rule]
        parts += [f"| `{name}` | " + " | ".join(_md(v) for v in values) + " |"
                  for name, values in comparison.parameter_rows]
        parts.append("")
    parts += ["## Metrics (base, fine-tuned, Δ)", "", header, rule]
    for name, values, best in comparison.metric_rows:
        cells = [f"**{_fmt(v)}**" if i == best else _fmt(v) for i, v in enumerate(values)]
        parts.append(f"| `{name}` | " + " | ".join(cells) + " |")
    parts += ["", "Bold: the best of the runs (fine-tuned and Δ rows of recall, MRR and separation).", ""]
    return "\n".join(parts)


def _chart_png(comparison: Comparison, headline: str) -> bytes | None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = {row[0]: row[1] for row in comparison.metric_rows}
    base, finetuned = values.get(f"{headline}_base"), values.get(f"{headline}_finetuned")
    if base is None and finetuned is None:
        return None
    labels = [run.label for run in comparison.runs]
    figure = Figure(figsize=(max(4.5, 1.1 * len(labels) + 2), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.38
    for offset, series, label, color in ((-width / 2, base, "base", "#9aa5b1"),
                                         (width / 2, finetuned, "fine-tuned", "#2f6fde")):
        if series is None:
            continue
        heights = [v if v is not None else 0.0 for v in series]
        bars = axes.bar([i + offset for i in range(len(labels))], heights, width, label=label, color=color)
        axes.bar_label(bars, labels=[_fmt(v) for v in series], fontsize=7, padding=1)
    axes.set_xticks(range(len(labels)), labels, rotation=15 if len(labels) > 3 else 0, fontsize=8)
    axes.set_ylim(0, 1.1)
    axes.set_title(headline.replace("_at_", "@").replace("_", " "))
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", sans-serif; margin: 24px; color: #1f2933; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #d3d8de; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; font-family: monospace; }
th { background: #f0f3f6; }
td.best { background: #dcf5e3; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
img { max-width: 100%; }
"""


def render_html(comparison: Comparison) -> str:
    """A self-contained page: the tables and one chart per headline metric across the runs."""
    esc = html.escape
    head = "<tr><th></th>" + "".join(f"<th>{esc(h)}</th>" for h in _headers(comparison)) + "</tr>"
    charts = []
    for headline in HEADLINE_METRICS:
        png = _chart_png(comparison, headline)
        if png:
            charts.append(f'<div><img alt="{esc(headline)}" src="data:image/png;base64,'
                          f'{base64.b64encode(png).decode("ascii")}"></div>')
    body = [f"<h1>searchtune: {len(comparison.runs)} runs compared</h1><ul>"]
    body += [f"<li><b>{esc(run.label)}</b>: <code>{esc(run.source)}</code>"
             + (f" ({esc(run.state.lower())})" if run.state else "") + "</li>" for run in comparison.runs]
    best = comparison.runs[comparison.best_run].label if comparison.best_run is not None else "—"
    body.append(f"</ul><p>Best run by <code>{esc(comparison.best_by)}</code>: <b>{esc(best)}</b></p>")
    body.append(f'<h2>Headline metrics</h2><div class="charts">{"".join(charts)}</div>')
    if comparison.parameter_rows:
        rows = "".join(f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>"
                       for name, values in comparison.parameter_rows)
        body.append(f"<h2>Parameters that differ</h2><table><thead>{head}</thead><tbody>{rows}</tbody></table>")
    rows = "".join(f"<tr><td>{esc(name)}</td>" + "".join(
        f'<td class="best">{_fmt(v)}</td>' if i == best_index else f"<td>{_fmt(v)}</td>"
        for i, v in enumerate(values)) + "</tr>" for name, values, best_index in comparison.metric_rows)
    body.append(f"<h2>Metrics</h2><table><thead>{head}</thead><tbody>{rows}</tbody></table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>searchtune: runs compared"
            f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


# --------------------------------------------------------------------------- command line


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folder, s3:// run root, or KFP run id (with --host)")
    parser.add_argument("--markdown", type=Path, help="also write the comparison as Markdown")
    parser.add_argument("--html", type=Path, help="also write an HTML page with one chart per headline metric")
    parser.add_argument("--best-by", default=DEFAULT_BEST_BY, help="the metric that picks the best run")
    group = parser.add_argument_group("KFP run ids")
    group.add_argument("--host", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT)")
    group.add_argument("--namespace", help="KFP profile namespace")
    group.add_argument("--token-file", help="file holding a bearer token for the KFP API")
    group.add_argument("--kube-context", help="kubeconfig context when no --host is given")
    group.add_argument("--pipeline-root", help="where the runs' artifacts are (default: the run's own)")
    group.add_argument("--profile", help="cluster profile: its pipeline_root and namespace")


def compare_command(args: argparse.Namespace) -> int:
    import os

    from components.jsonl_files import write_text

    pipeline_root, namespace = args.pipeline_root, args.namespace
    if args.profile:
        from pipelines.cluster_profile import load_cluster_profile

        profile = load_cluster_profile(args.profile)
        pipeline_root, namespace = pipeline_root or profile.pipeline_root, namespace or profile.namespace
    host = args.host or os.environ.get("KF_PIPELINES_ENDPOINT")
    connections = []

    def connect():
        # Only when a run id is given: folders and s3:// roots need no API.
        if not connections:
            from pipelines.submit import kfp_client

            connections.append(kfp_client(host, namespace, args.token_file, args.kube_context))
        return connections[0]

    runs = [load_run(name, connect if host or args.kube_context else None, pipeline_root) for name in args.runs]
    comparison = compare_runs(runs, args.best_by)
    print(render_text(comparison), end="")
    if args.markdown:
        write_text(args.markdown, render_markdown(comparison))
        print(f"markdown: {args.markdown}")
    if args.html:
        write_text(args.html, render_html(comparison))
        print(f"html: {args.html}")
    return 0
