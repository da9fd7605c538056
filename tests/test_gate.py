"""The quality gate: margin on recall@1 in both pools, significance, no headline metric falling."""

from __future__ import annotations

import json

import pytest

from components.metric_names import flat_metric_name
from components.gate import NO_SIGNIFICANCE, GateConfig, decide_promotion
from pipelines.cli import main

CONFIG = GateConfig(min_recall_at_1_gain=0.02, significance_level=0.05, max_metric_drop=0.01)


def evaluation_metrics(delta: float = 0.05, p_value: float | None = 0.001, **overrides: float) -> dict[str, float]:
    """Flat metrics as the evaluate step logs them, with the significance names of its contract."""
    metrics: dict[str, float] = {}
    for pool in ("test", "global"):
        for metric in ("recall", "mrr"):
            for k in (1, 5, 10):
                base = 0.5 + 0.01 * k
                metrics[flat_metric_name(pool, metric, k, "base")] = base
                metrics[flat_metric_name(pool, metric, k, "finetuned")] = base + delta
                metrics[flat_metric_name(pool, metric, k, "delta")] = delta
                if p_value is not None:
                    metrics[f"{pool}_{metric}_at_{k}_p_value"] = p_value
                    metrics[f"{pool}_{metric}_at_{k}_delta_ci_low"] = delta - 0.02
                    metrics[f"{pool}_{metric}_at_{k}_delta_ci_high"] = delta + 0.02
    metrics.update(overrides)
    return metrics


def test_a_clear_significant_gain_everywhere_is_promoted(tmp_path):
    decision = decide_promotion(evaluation_metrics(), tmp_path, CONFIG)
    assert decision.promote and decision.run_metrics == {"gate_promote": 1.0, "gate_failed_checks": 0.0}
    assert decision.reasons[0].startswith("promote: test recall@1 +0.0500, global recall@1 +0.0500")
    written = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert written["promote"] is True and all(check["passed"] for check in written["checks"])
    report = (tmp_path / "gate.md").read_text(encoding="utf-8")
    assert "# Quality gate: promote the fine-tuned model" in report
    assert "p = 0.001; 95% CI of Δ [+0.0300, +0.0700]" in report


def test_without_p_values_the_gate_refuses_rather_than_guess(tmp_path):
    decision = decide_promotion(evaluation_metrics(delta=0.2, p_value=None), tmp_path, CONFIG)
    assert not decision.promote
    assert decision.reasons == [NO_SIGNIFICANCE] == ["no significance test in the evaluation"]
    assert decision.run_metrics["gate_promote"] == 0.0


@pytest.mark.parametrize("overrides,reason", [
    ({"global_recall_at_1_delta": 0.015}, "global recall@1 changed by +0.0150, less than the required gain +0.0200"),
    ({"test_recall_at_1_delta": -0.005}, "test recall@1 changed by -0.0050, less than the required gain +0.0200"),
    ({"test_recall_at_1_p_value": 0.07}, "test recall@1 gain is not significant (p = 0.07 ≥ 0.05)"),
    ({"global_recall_at_1_p_value": 0.05}, "global recall@1 gain is not significant (p = 0.05 ≥ 0.05)"),
    ({"global_mrr_at_10_delta": -0.011}, "global mrr@10 fell by 0.0110, more than the tolerance 0.0100"),
    ({"test_recall_at_5_delta": -0.2}, "test recall@5 fell by 0.2000, more than the tolerance 0.0100"),
], ids=["global margin", "test worse", "test not significant", "p at the level", "mrr drop", "recall@5 drop"])
def test_each_condition_alone_blocks_promotion_and_says_why(tmp_path, overrides, reason):
    decision = decide_promotion(evaluation_metrics(**overrides), tmp_path, CONFIG)
    assert not decision.promote
    assert decision.reasons == [reason]
    assert decision.run_metrics["gate_failed_checks"] == 1.0
    assert reason in (tmp_path / "gate.md").read_text(encoding="utf-8")


def test_a_recall_at_1_loss_fails_both_the_margin_and_the_tolerance(tmp_path):
    decision = decide_promotion(evaluation_metrics(test_recall_at_1_delta=-0.05), tmp_path, CONFIG)
    assert decision.reasons == ["test recall@1 changed by -0.0500, less than the required gain +0.0200",
                                "test recall@1 fell by 0.0500, more than the tolerance 0.0100"]


def test_a_drop_within_the_tolerance_still_promotes(tmp_path):
    decision = decide_promotion(evaluation_metrics(test_mrr_at_10_delta=-0.009), tmp_path, CONFIG)
    assert decision.promote


def test_missing_recall_metrics_are_named(tmp_path):
    metrics = evaluation_metrics()
    del metrics["global_recall_at_1_delta"]
    decision = decide_promotion(metrics, tmp_path, CONFIG)
    assert not decision.promote
    assert "global recall@1: the evaluation has no global_recall_at_1_delta" in decision.reasons


def test_a_headline_metric_that_is_not_a_number_blocks_promotion(tmp_path):
    decision = decide_promotion(evaluation_metrics(global_mrr_at_10_delta=float("nan")), tmp_path, CONFIG)
    assert not decision.promote
    assert "global mrr@10: the evaluation's global_mrr_at_10_delta is not a number" in decision.reasons


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="significance_level"):
        GateConfig(significance_level=0)
    with pytest.raises(ValueError, match="max_metric_drop"):
        GateConfig(max_metric_drop=-0.1)


def test_gate_command_reads_a_runs_flat_metrics_and_exits_1_when_it_refuses(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(evaluation_metrics()), encoding="utf-8")
    bad.write_text(json.dumps(evaluation_metrics(p_value=None)), encoding="utf-8")
    assert main(["gate", "--metrics", str(good), "--output-dir", str(tmp_path / "g1")]) == 0
    assert "Quality gate: promote" in capsys.readouterr().out
    assert main(["gate", "--metrics", str(bad), "--output-dir", str(tmp_path / "g2")]) == 1
    assert NO_SIGNIFICANCE in capsys.readouterr().out
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"base": {"test_pool": {}}}), encoding="utf-8")
    assert main(["gate", "--metrics", str(nested), "--output-dir", str(tmp_path / "g3")]) == 2
    assert f"{nested}: expected flat metrics" in capsys.readouterr().err
