"""Gate → (dsl.If) promote → parity on the real KFP local runner, with the pipeline's own
components. The evaluation is fabricated (an evaluation with p-values and a clear gain), so
the branch runs without training; the full pipeline's run is in test_pipeline.py."""


import json

import pytest
from kfp import dsl, local
from kfp.dsl import Dataset, Metrics, Model, Output

from pipelines.cli import run_ending
from pipelines.kfp_components import SEARCHTUNE_IMAGE, parity_check, promote_model, gate_promotion

pytestmark = pytest.mark.slow


@dsl.component(base_image=SEARCHTUNE_IMAGE, install_kfp_package=False)
def fabricated_evaluation(delta: float, p_value: float, metrics: Output[Metrics]):
    for pool in ("test", "global"):
        for metric in ("recall", "mrr"):
            for k in (1, 5, 10):
                metrics.log_metric(f"{pool}_{metric}_at_{k}_base", 0.5)
                metrics.log_metric(f"{pool}_{metric}_at_{k}_finetuned", 0.5 + delta)
                metrics.log_metric(f"{pool}_{metric}_at_{k}_delta", delta)
                metrics.log_metric(f"{pool}_{metric}_at_{k}_p_value", p_value)
                metrics.log_metric(f"{pool}_{metric}_at_{k}_delta_ci_low", delta - 0.01)
                metrics.log_metric(f"{pool}_{metric}_at_{k}_delta_ci_high", delta + 0.01)


@dsl.pipeline(name="promotion-branch")
def promotion_branch(model_dir: str, corpus: str, p_value: float, serving_uri: str):
    evaluation = fabricated_evaluation(delta=0.05, p_value=p_value)
    model = dsl.importer(artifact_uri=model_dir, artifact_class=Model, reimport=False)
    pool = dsl.importer(artifact_uri=corpus, artifact_class=Dataset, reimport=False)
    gate = gate_promotion(evaluation_metrics=evaluation.outputs["metrics"], min_recall_at_1_gain=0.01,
                        significance_level=0.05, max_metric_drop=0.01)
    with dsl.If(gate.outputs["Output"] == True):  # noqa: E712 (a KFP condition)
        promoted = promote_model(finetuned_model=model.output, global_pool=pool.output, mined_test=pool.output,
                                 base_model=model_dir, serving_uri=serving_uri, served_model_name="shop-search",
                                 helm_release="", helm_namespace="default", helm_chart="helm/searchtune-serving")
        parity_check(finetuned_model=model.output, promoted_model=promoted.outputs["promoted_model"],
                     serving_endpoint="")


def _run(tmp_path, tiny_bert, p_value: float) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "artifacts"),
               enable_caching=False)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "p0", "text": "保温杯"}, ensure_ascii=False) + "\n", encoding="utf-8")
    promotion_branch(model_dir=str(tiny_bert), corpus=str(corpus), p_value=p_value,
                     serving_uri=str(tmp_path / "serving"))


def test_a_passing_gate_promotes_and_the_promoted_copy_is_served_as_trained(tmp_path, tiny_bert):
    _run(tmp_path, tiny_bert, p_value=0.001)
    promoted = list((tmp_path / "serving").glob("shop-search-*/model.safetensors"))
    assert len(promoted) == 1
    reports = list(tmp_path.glob("artifacts/**/promote-model/promotion"))
    assert len(reports) == 1
    text = reports[0].read_text(encoding="utf-8")
    assert f"searchtune serve --model {promoted[0].parent} --served-model-name shop-search --ui" in text
    parity = list(tmp_path.glob("artifacts/**/parity-check/parity_report"))
    assert len(parity) == 1 and "served as trained" in parity[0].read_text(encoding="utf-8")
    # What `searchtune run --local` prints last: the decision, then the one serve command.
    gate_report = next(tmp_path.glob("artifacts/**/gate-promotion/gate_report")).read_text(encoding="utf-8")
    ending = run_ending(gate_report, text).splitlines()
    assert ending[0].startswith("quality gate: promote the fine-tuned model (promote: test recall@1 +0.0500")
    assert ending[-1].strip().startswith(f"searchtune serve --model {promoted[0].parent} ")
    assert "--ui --base-model" in ending[-1]
    # The failing side of the condition is the full pipeline's (tests/test_pipeline.py).
