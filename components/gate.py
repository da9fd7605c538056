"""Quality gate step: promote the fine-tuned model only when it is better enough, for sure.

Reads the evaluate step's flat metrics (``{pool}_{metric}_at_{k}_{base|finetuned|delta}``
and, from the paired significance test, ``{pool}_{metric}_at_{k}_p_value`` with
``..._delta_ci_low`` / ``..._delta_ci_high``) and promotes only when all of these hold:

1. recall@1 rises by at least ``min_recall_at_1_gain`` in **both** pools (test and global);
2. each of those two gains is significant: p-value below ``significance_level``;
3. no headline metric (recall@k and MRR@k, both pools, every k evaluated) falls by more
   than ``max_metric_drop``.

An evaluation without p-values is never promoted ("no significance test in the
evaluation"): the gate does not guess significance from the deltas. Writes
``gate.json`` (decision, reasons, every check) and ``gate.md``; the decision is also a
flat run metric (``gate_promote`` 1 or 0, ``gate_failed_checks``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from components.metric_names import POOLS, flat_metric_name
from components.jsonl_files import write_json, write_text

logger = logging.getLogger(__name__)

DECISION_FILENAME = "gate.json"
REPORT_FILENAME = "gate.md"
NO_SIGNIFICANCE = "no significance test in the evaluation"
_DELTA_NAME = re.compile(r"^(test|global)_(recall|mrr)_at_(\d+)_delta$")


@dataclass(frozen=True)
class GateConfig:
    """When a fine-tuned model is promoted.

    Attributes:
        min_recall_at_1_gain: fine-tuned minus base recall@1 needed in both pools (absolute,
            e.g. 0.01 = one point).
        significance_level: the paired test's p-value for each recall@1 gain must be below this.
        max_metric_drop: no recall@k or MRR@k, in either pool, may fall by more than this
            (absolute).
    """

    min_recall_at_1_gain: float = 0.01
    significance_level: float = 0.05
    max_metric_drop: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.significance_level <= 1:
            raise ValueError(f"significance_level must be in (0, 1], got {self.significance_level}")
        if self.max_metric_drop < 0:
            raise ValueError(f"max_metric_drop must be >= 0, got {self.max_metric_drop}")
        if not -1 <= self.min_recall_at_1_gain <= 1:
            raise ValueError(f"min_recall_at_1_gain must be in [-1, 1], got {self.min_recall_at_1_gain}")


@dataclass(frozen=True)
class GateCheck:
    """One condition: what was required, what was observed, whether it held."""

    name: str
    required: str
    observed: str
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict.

    Attributes:
        promote: True only when every check passed.
        reasons: one line per failed check (or one line saying why it promotes).
        checks: every check made.
        run_metrics: ``gate_promote`` (1/0) and ``gate_failed_checks``, for the run's metrics.
        decision_path, report_path: ``gate.json`` and ``gate.md``.
    """

    promote: bool
    reasons: list[str]
    checks: list[GateCheck] = field(default_factory=list)
    run_metrics: dict[str, float] = field(default_factory=dict)
    decision_path: Path | None = None
    report_path: Path | None = None


def _significance_name(pool: str, metric: str, k: int, statistic: str) -> str:
    """``global_recall_at_1_p_value`` and the like: the evaluate step's significance names."""
    return flat_metric_name(pool, metric, k, "delta")[:-len("_delta")] + f"_{statistic}"  # type: ignore[arg-type]


def _number(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _label(pool: str, metric: str, k: int) -> str:
    return f"{pool} {metric}@{k}"


def _recall_checks(metrics: Mapping[str, float], config: GateConfig) -> tuple[list[GateCheck], list[str]]:
    checks, reasons = [], []
    missing_significance = False
    for pool in POOLS:
        label = _label(pool, "recall", 1)
        delta = _number(metrics, flat_metric_name(pool, "recall", 1, "delta"))  # type: ignore[arg-type]
        required = f"≥ {config.min_recall_at_1_gain:+.4f}"
        if delta is None:
            checks.append(GateCheck(f"{label} gain", required, "missing", False))
            reasons.append(f"{label}: the evaluation has no {flat_metric_name(pool, 'recall', 1, 'delta')}")
        else:
            passed = delta >= config.min_recall_at_1_gain
            checks.append(GateCheck(f"{label} gain", required, f"{delta:+.4f}", passed))
            if not passed:
                reasons.append(f"{label} changed by {delta:+.4f}, less than the required gain "
                               f"{config.min_recall_at_1_gain:+.4f}")

        p_value = _number(metrics, _significance_name(pool, "recall", 1, "p_value"))
        low = _number(metrics, _significance_name(pool, "recall", 1, "delta_ci_low"))
        high = _number(metrics, _significance_name(pool, "recall", 1, "delta_ci_high"))
        required = f"p < {config.significance_level:g}"
        if p_value is None:
            checks.append(GateCheck(f"{label} significance", required, "no p-value", False))
            missing_significance = True
            continue
        interval = f"; 95% CI of Δ [{low:+.4f}, {high:+.4f}]" if low is not None and high is not None else ""
        passed = p_value < config.significance_level
        checks.append(GateCheck(f"{label} significance", required, f"p = {p_value:.4g}{interval}", passed))
        if not passed:
            reasons.append(f"{label} gain is not significant (p = {p_value:.4g} ≥ {config.significance_level:g})")
    if missing_significance:
        reasons.append(NO_SIGNIFICANCE)
    return checks, reasons


def _drop_checks(metrics: Mapping[str, float], config: GateConfig) -> tuple[list[GateCheck], list[str]]:
    checks, reasons = [], []
    headline = sorted((m.group(1), m.group(2), int(m.group(3))) for name in metrics
                      if (m := _DELTA_NAME.match(name)))
    if not headline:
        checks.append(GateCheck("headline metrics", "present", "none", False))
        return checks, ["the evaluation has no headline metrics (recall@k, MRR@k deltas)"]
    worst: tuple[float, str] | None = None
    for pool, metric, k in headline:
        delta = _number(metrics, flat_metric_name(pool, metric, k, "delta"))  # type: ignore[arg-type]
        label = _label(pool, metric, k)
        if delta is None:  # NaN or not a number: a metric that cannot be read cannot be shown not to fall
            reasons.append(f"{label}: the evaluation's {flat_metric_name(pool, metric, k, 'delta')} is not a number")
            continue
        if worst is None or delta < worst[0]:
            worst = (delta, label)
        if delta < -config.max_metric_drop:
            reasons.append(f"{label} fell by {-delta:.4f}, more than the tolerance {config.max_metric_drop:.4f}")
    observed = f"worst {worst[1]} {worst[0]:+.4f}" if worst else "no values"
    checks.append(GateCheck(f"no headline metric falls (of {len(headline)})", f"≥ {-config.max_metric_drop:+.4f}",
                            observed, not reasons))
    return checks, reasons


def decide_promotion(evaluation_metrics: Mapping[str, float], output_dir: str | os.PathLike,
                     config: GateConfig = GateConfig()) -> GateDecision:
    """Decide whether the fine-tuned model is promoted; write ``gate.json`` and ``gate.md``.

    Args:
        evaluation_metrics: the evaluate step's flat metrics (the run's metrics).
        output_dir: where the decision and its report go.
        config: margin, significance level, tolerance.
    """
    recall_checks, recall_reasons = _recall_checks(evaluation_metrics, config)
    drop_checks, drop_reasons = _drop_checks(evaluation_metrics, config)
    checks = recall_checks + drop_checks
    reasons = recall_reasons + drop_reasons
    promote = not reasons
    if promote:
        gains = ", ".join(f"{c.name.replace(' gain', '')} {c.observed}" for c in recall_checks if "gain" in c.name)
        reasons = [f"promote: {gains}, significant, and no headline metric fell by more than "
                   f"{config.max_metric_drop:.4f}"]
    failed = sum(not check.passed for check in checks)
    run_metrics = {"gate_promote": 1.0 if promote else 0.0, "gate_failed_checks": float(failed)}
    output_dir = Path(output_dir)
    decision_path, report_path = output_dir / DECISION_FILENAME, output_dir / REPORT_FILENAME
    write_json(decision_path, {"promote": promote, "reasons": reasons, "config": asdict(config),
                               "checks": [asdict(check) for check in checks], "run_metrics": run_metrics})
    decision = GateDecision(promote=promote, reasons=reasons, checks=checks, run_metrics=run_metrics,
                            decision_path=decision_path, report_path=report_path)
    write_text(report_path, _render_report(decision))
    logger.info("quality gate: %s (%s)", "PROMOTE" if promote else "do not promote", "; ".join(reasons))
    return decision


def _render_report(decision: GateDecision) -> str:
    """The gate's Markdown report: the verdict, its reasons, every check."""
    verdict = "promote the fine-tuned model" if decision.promote else "do not promote"
    lines = [f"# Quality gate: {verdict}", ""]
    lines += [f"- {reason}" for reason in decision.reasons]
    lines += ["", "| check | required | observed | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.required} | {c.observed} | {'pass' if c.passed else 'FAIL'} |"
              for c in decision.checks]
    return "\n".join(lines) + "\n"
