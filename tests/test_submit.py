"""``searchtune submit`` / ``run`` against a KFP API stand-in that speaks the API's own models.

The stand-in (tests/kfp_api_server.py) parses every request into the ``kfp-server-api``
model it must be and answers with those models, so these tests fail when the client we
drive and the API disagree. An end-to-end submit to a real backend runs when
``SEARCHTUNE_KFP_HOST`` names one.
"""

from __future__ import annotations

import os

import pytest

from pipelines.cli import main
from pipelines.cluster_profile import ClusterProfile, parse_cluster_profile
from tests.kfp_api_server import KfpApiServer, ScriptStep
from tests.s3_server import ACCESS_KEY, SECRET_KEY

# The recipe's models as a cluster run takes them: sealed folders in S3 (searchtune push-model).
STUDENT, TEACHER = "s3://ml-models/base/bge-large-zh-v1.5/", "s3://ml-models/base/bge-reranker-v2-m3/"
MODELS = ["--set", f"student_model={STUDENT}", "--set", f"teacher_model={TEACHER}"]

PROFILE = """\
namespace: team-search
service_account: search-runner
pipeline_root: s3://ml-artifacts/searchtune
s3: {secret_name: ml-s3}
images: {steps: "registry.local/st:7", launcher: "registry.local/st-launcher:7"}
"""

FAILED_IN_MINE = [
    ScriptStep("RUNNING", (("root-driver", "SUCCEEDED", ""), ("prepare-data", "RUNNING", ""))),
    ScriptStep("RUNNING", (("prepare-data", "SUCCEEDED", ""), ("mine-negatives", "RUNNING", ""))),
    ScriptStep("FAILED", (("prepare-data", "SUCCEEDED", ""),
                          ("mine-negatives", "FAILED", "s3://ml-artifacts/x: access denied: check the credentials"),
                          ("executor", "FAILED", "exit status 1"))),
]
SUCCEEDED = [
    ScriptStep("RUNNING", (("prepare-data", "RUNNING", ""),)),
    ScriptStep("SUCCEEDED", tuple((name, "SUCCEEDED", "") for name in (
        "prepare-data", "mine-negatives", "score-pairs", "fine-tune-embedder", "evaluate-models"))),
]


@pytest.fixture()
def kfp_api():
    server = KfpApiServer().start()
    yield server
    server.stop()


@pytest.fixture()
def profile_file(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(PROFILE, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_ambient_kfp_settings(monkeypatch, tmp_path):
    """No kubeconfig, token or endpoint of this machine's user leaks into a test."""
    for name in ("KUBECONFIG", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_UI_ENDPOINT",
                 "SEARCHTUNE_KFP_TOKEN_FILE", "SEARCHTUNE_KFP_COOKIES", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # The keys of the machine that submits: they must go nowhere.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def _no_credentials_sent(server: KfpApiServer, printed: str) -> None:
    sent = b"".join(server.state.raw)
    assert ACCESS_KEY.encode() not in sent and SECRET_KEY.encode() not in sent
    assert ACCESS_KEY not in printed and SECRET_KEY not in printed


def test_submit_uploads_the_profiled_pipeline_and_creates_the_run(kfp_api, profile_file, capsys):
    code = main(["submit", *MODELS, "--host", kfp_api.host, "--profile", str(profile_file), "--experiment", "weekly",
                 "--run-name", "weekly 48", "--set", "num_train_epochs=2", "--set", "deepspeed=false",
                 "--train-data", "s3://ml-data/rows.jsonl"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    [run] = kfp_api.state.runs.values()
    assert printed.out.strip().splitlines()[-1] == \
        f"run {run.run_id} submitted: {kfp_api.host}/#/runs/details/{run.run_id}"

    [pipeline] = kfp_api.state.pipelines.values()
    assert pipeline.display_name == "searchtune-finetune-embedder" and pipeline.namespace is None
    [upload] = kfp_api.state.uploads
    executors = upload["pipeline_spec"]["deploymentSpec"]["executors"]
    assert executors["exec-mine-negatives"]["container"]["image"] == "registry.local/st:7"
    assert upload["pipeline_spec"]["defaultPipelineRoot"] == "s3://ml-artifacts/searchtune"
    secrets = upload["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert secrets["exec-score-pairs"]["secretAsEnv"][0]["secretName"] == "ml-s3"

    assert run.display_name == "weekly 48" and run.service_account == "search-runner"
    assert kfp_api.state.experiments[run.experiment_id].display_name == "weekly"
    assert run.pipeline_version_reference.pipeline_id == pipeline.pipeline_id
    assert run.runtime_config.pipeline_root == "s3://ml-artifacts/searchtune"
    parameters = run.runtime_config.parameters
    assert parameters["num_train_epochs"] == 2.0 and parameters["deepspeed"] is False
    assert parameters["train_data"] == "s3://ml-data/rows.jsonl"
    assert parameters["student_model"] == STUDENT and parameters["teacher_model"] == TEACHER
    assert parameters["learning_rate"] == 1e-5, "a cluster run starts from the recipe"
    # Single-user backend: no call carries a namespace.
    assert not [r for r in kfp_api.state.requests if "namespace" in r[2]]
    _no_credentials_sent(kfp_api, printed.out + printed.err)


def test_an_unchanged_pipeline_is_uploaded_once_per_version(kfp_api, profile_file, capsys):
    for _ in range(3):
        assert main(["submit", *MODELS, "--host", kfp_api.host, "--profile", str(profile_file)]) == 0
    [pipeline_id] = kfp_api.state.pipelines
    versions = kfp_api.state.versions[pipeline_id]
    # The first upload makes the pipeline (its first version); later ones add the digest-named version once.
    assert len(kfp_api.state.uploads) == 2 and len(versions) == 2
    runs = list(kfp_api.state.runs.values())
    assert runs[1].pipeline_version_reference.pipeline_version_id == \
        runs[2].pipeline_version_reference.pipeline_version_id == versions[1].pipeline_version_id
    assert len(kfp_api.state.experiments) == 1, "the experiment is created once, then found"


def test_wait_follows_the_run_and_names_the_failed_step(kfp_api, profile_file, capsys):
    kfp_api.state.script = FAILED_IN_MINE
    code = main(["submit", *MODELS, "--host", kfp_api.host, "--profile", str(profile_file), "--wait", "--poll-seconds", "0.05"])
    printed = capsys.readouterr()
    assert code == 1
    assert "prepare-data: running" in printed.out and "prepare-data: succeeded" in printed.out
    assert "mine-negatives: failed" in printed.out and "executor" not in printed.out
    error = printed.err.strip().splitlines()[-1]
    assert error.startswith("searchtune: error: run ") and " failed: step 'mine-negatives' failed: " in error
    assert "access denied: check the credentials" in error and "/#/runs/details/" in error


def test_run_without_local_submits_and_waits_to_success(kfp_api, profile_file, capsys):
    kfp_api.state.script = SUCCEEDED
    code = main(["run", *MODELS, "--host", kfp_api.host, "--profile", str(profile_file), "--wait", "--poll-seconds", "0.05"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    [run] = kfp_api.state.runs.values()
    assert f"run {run.run_id} succeeded" in printed.out and "evaluate-models: succeeded" in printed.out
    assert run.runtime_config.parameters["student_model"] == STUDENT


def test_no_cache_compiles_every_step_uncached_and_local_only_flags_are_refused(kfp_api, profile_file, capsys):
    assert main(["submit", *MODELS, "--host", kfp_api.host, "--profile", str(profile_file), "--no-cache"]) == 0
    [upload] = kfp_api.state.uploads
    spec = upload["pipeline_spec"]
    tasks = list(spec["root"]["dag"]["tasks"].values()) + [
        task for component in spec["components"].values() for task in component.get("dag", {}).get("tasks", {}).values()]
    assert len(tasks) >= 9 and not any(task["cachingOptions"].get("enableCache") for task in tasks)
    capsys.readouterr()
    for flag in ("--output-dir", "--cache-dir"):
        assert main(["run", *MODELS, "--host", kfp_api.host, "--profile", str(profile_file), flag, "somewhere"]) == 2
        assert f"{flag}: only a local run (--local)" in capsys.readouterr().err
    assert len(kfp_api.state.runs) == 1


def test_a_multi_user_backend_gets_the_namespace_and_the_token(tmp_path, profile_file, capsys):
    server = KfpApiServer(multi_user=True, token="kfp-test-token").start()
    try:
        assert main(["submit", *MODELS, "--host", server.host, "--profile", str(profile_file)]) == 1
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"searchtune: error: {server.host}: ") and "HTTP 401" in error
        assert "check the token" in error and "\n" not in error and "Traceback" not in error

        token = tmp_path / "token"
        token.write_text("kfp-test-token\n", encoding="utf-8")
        assert main(["submit", *MODELS, "--host", server.host, "--profile", str(profile_file), "--token-file", str(token),
                     "--namespace", "team-b"]) == 0, capsys.readouterr().err
        [run] = server.state.runs.values()
        assert server.state.experiments[run.experiment_id].namespace == "team-b"
        [pipeline] = server.state.pipelines.values()
        assert pipeline.namespace == "team-b"
        # The training job the fine-tune step launches goes to the same namespace.
        [upload] = server.state.uploads
        compiled = upload["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]["cluster_profile"]
        assert parse_cluster_profile(compiled["defaultValue"]).namespace == "team-b"
        assert "kfp-test-token" not in capsys.readouterr().out
    finally:
        server.stop()


def test_a_projected_service_account_token_is_used_in_a_pod(tmp_path, profile_file, monkeypatch, capsys):
    server = KfpApiServer(multi_user=True, token="projected-sa-token").start()
    try:
        token = tmp_path / "sa-token"
        token.write_text("projected-sa-token", encoding="utf-8")
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
        assert main(["submit", *MODELS, "--host", server.host, "--profile", str(profile_file)]) == 0, capsys.readouterr().err
        [run] = server.state.runs.values()
        assert server.state.experiments[run.experiment_id].namespace == "team-search", "the profile's namespace"
    finally:
        server.stop()


@pytest.mark.parametrize("arguments, message", [
    (["submit", *MODELS], "no KFP API to talk to: give --host URL"),
    (["run", *MODELS], "no KFP API to talk to: give --host URL"),
    (["submit", "--host", "http://127.0.0.1:9", "--train-data", "rows.jsonl"],
     "--train-data: a cluster run reads its data from S3; give an s3:// URI, not 'rows.jsonl'"),
    (["submit", "--host", "http://127.0.0.1:9", "--set", "no_such_thing=1"], "no_such_thing"),
])
def test_bad_submissions_stop_with_one_line_and_exit_2(arguments, message, capsys):
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_hub_models_are_refused_before_anything_is_uploaded(kfp_api, profile_file, capsys):
    """The images have no model hub: the recipe's hub names would fail in the first step's pod."""
    assert main(["submit", "--host", kfp_api.host, "--profile", str(profile_file)]) == 2
    error = capsys.readouterr().err
    assert ("student_model='BAAI/bge-large-zh-v1.5': a cluster run's pods have no model hub and no local "
            "folders; put the model in S3 with `searchtune push-model --model BAAI/bge-large-zh-v1.5 --uri "
            "s3://<bucket>/models/bge-large-zh-v1.5/`") in error and error.count("\n") == 1
    assert main(["submit", "--host", kfp_api.host, "--profile", str(profile_file), "--set",
                 f"student_model={STUDENT}"]) == 2
    assert "teacher_model='BAAI/bge-reranker-v2-m3': a cluster run's pods have no model hub" in capsys.readouterr().err
    assert not kfp_api.state.uploads and not kfp_api.state.runs
    # Images that carry the models in their Hugging Face cache say so, and the names go through.
    assert main(["submit", "--host", kfp_api.host, "--profile", str(profile_file), "--models-in-image"]) == 0
    [run] = kfp_api.state.runs.values()
    assert run.runtime_config.parameters["student_model"] == "BAAI/bge-large-zh-v1.5"


def test_profile_decided_parameters_keep_their_compiled_defaults():
    from pipelines.submit import run_arguments

    preset = {"learning_rate": 1e-5, "train_executor": "local", "cluster_profile": ""}
    assert run_arguments(preset) == {"learning_rate": 1e-5}
    assert run_arguments(preset, {"train_executor"}) == {"learning_rate": 1e-5, "train_executor": "local"}


def test_an_unreachable_api_fails_in_one_line(capsys):
    assert main(["submit", *MODELS, "--host", "http://127.0.0.1:9"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("searchtune: error: http://127.0.0.1:9: ") and "cannot reach the KFP API" in error
    assert error.count("\n") == 1


@pytest.mark.skipif(not os.environ.get("SEARCHTUNE_KFP_HOST"),
                    reason="no real KFP 2.x backend: set SEARCHTUNE_KFP_HOST (and SEARCHTUNE_KFP_PROFILE, "
                           "SEARCHTUNE_KFP_TOKEN_FILE as needed) to submit a run end to end")
def test_end_to_end_submit_to_a_real_backend(capsys, monkeypatch):
    from pipelines.submit import kfp_client

    # The fixture above cleared the ambient settings; a real backend needs the caller's.
    monkeypatch.setenv("HOME", os.path.expanduser(f"~{os.environ.get('USER', 'root')}"))
    profile = os.environ.get("SEARCHTUNE_KFP_PROFILE")
    # The local preset's builtin model is in the steps image: no model needs pushing first.
    arguments = ["submit", "--host", os.environ["SEARCHTUNE_KFP_HOST"], "--experiment", "searchtune-e2e",
                 "--preset", "local", "--set", "sample_queries=200", "--set", "max_steps=5"]
    arguments += ["--profile", profile] if profile else []
    if os.environ.get("SEARCHTUNE_KFP_TOKEN_FILE"):
        arguments += ["--token-file", os.environ["SEARCHTUNE_KFP_TOKEN_FILE"]]
    if os.environ.get("SEARCHTUNE_KFP_WAIT"):
        arguments += ["--wait", "--poll-seconds", "15"]
    assert main(arguments) == 0, capsys.readouterr().err
    run_id = capsys.readouterr().out.split("run ", 1)[1].split(" ", 1)[0]
    api = kfp_client(os.environ["SEARCHTUNE_KFP_HOST"], ClusterProfile().namespace,
                     os.environ.get("SEARCHTUNE_KFP_TOKEN_FILE"))
    assert api.client.get_run(run_id).run_id == run_id
