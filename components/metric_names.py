"""The evaluate step's stable metric names, apart from the metrics themselves.

The gate, ``searchtune compare`` and the KFP run metrics read these names; they live here,
with no numeric library, so the small launcher image (no torch, no numpy) can use them.
"""

from __future__ import annotations

import numbers
from typing import Literal, Sequence

PoolName = Literal["test", "global"]
MetricName = Literal["recall", "mrr"]
ModelRole = Literal["base", "finetuned", "delta"]
# What a flat name can end in: a system's value, the fine-tuned-minus-base difference, or
# the difference's significance.
FlatSuffix = Literal["base", "finetuned", "delta", "bm25", "hybrid", "p_value", "delta_ci_low", "delta_ci_high",
                     "significant"]

POOLS: tuple[str, ...] = ("test", "global")
METRICS: tuple[str, ...] = ("recall", "mrr")
MODEL_ROLES: tuple[str, ...] = ("base", "finetuned", "delta")
LEXICAL_SYSTEMS: tuple[str, ...] = ("bm25", "hybrid")
SIGNIFICANCE_SUFFIXES: tuple[str, ...] = ("p_value", "delta_ci_low", "delta_ci_high", "significant")
FLAT_SUFFIXES: tuple[str, ...] = MODEL_ROLES + LEXICAL_SYSTEMS + SIGNIFICANCE_SUFFIXES
# Nested metrics.json keys of the two pools.
POOL_KEYS = {"test": "test_pool", "global": "global_pool"}
SIGNIFICANCE_LEVEL_METRIC = "significance_level"


def flat_metric_name(pool: PoolName, metric: MetricName, k: int, suffix: FlatSuffix) -> str:
    """The KFP-stable flat name of one figure, e.g. ``global_recall_at_1_finetuned``.

    Args:
        pool: ``test`` or ``global``.
        metric: ``recall`` or ``mrr``.
        k: the cut-off.
        suffix: ``base``, ``finetuned``, ``bm25`` or ``hybrid`` (a system's value);
            ``delta`` (fine-tuned minus base); ``p_value``, ``delta_ci_low``,
            ``delta_ci_high`` (the delta's randomization-test p-value and bootstrap
            interval) or ``significant`` (1 when the p-value is below the level, else 0).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if suffix not in FLAT_SUFFIXES:
        raise ValueError(f"suffix must be one of {FLAT_SUFFIXES}, got {suffix!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return f"{pool}_{metric}_at_{int(k)}_{suffix}"


def separation_metric_name(model: ModelRole) -> str:
    """``separation_base``, ``separation_finetuned`` or ``separation_delta``."""
    if model not in MODEL_ROLES:
        raise ValueError(f"model must be one of {MODEL_ROLES}, got {model!r}")
    return f"separation_{model}"


def flat_metric_names(ks: Sequence[int] = (1, 5, 10), lexical_baselines: bool = True) -> list[str]:
    """Every flat name the step reports for these cut-offs, in a fixed order."""
    ks = sorted({int(k) for k in ks})
    suffixes = MODEL_ROLES + (LEXICAL_SYSTEMS if lexical_baselines else ()) + SIGNIFICANCE_SUFFIXES
    names = [flat_metric_name(pool, metric, k, suffix)  # type: ignore[arg-type]
             for pool in POOLS for metric in METRICS for k in ks for suffix in suffixes]
    return (names + [separation_metric_name(role) for role in MODEL_ROLES]  # type: ignore[arg-type]
            + [SIGNIFICANCE_LEVEL_METRIC])


def metric_key(metric: str, k: int) -> str:
    """The nested metrics.json key of a metric, e.g. ``recall@1``."""
    return f"{metric}@{k}"
