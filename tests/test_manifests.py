"""manifests/ (kustomize): what a cluster needs before the first run, checked without a cluster."""

from __future__ import annotations

import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipelines.cluster_profile import ClusterProfile
from tests.scanners import MANIFESTS, kustomize_build, unexplained_findings

KUBERNETES_VERSION = "1.30.0"

# KFP 2.x's launcher reads `providers` into these Go structs (kubeflow/pipelines,
# backend/src/v2/config/env.go: BucketProviders; backend/src/v2/config/s3.go:
# S3ProviderConfig, S3ProviderDefault, S3Credentials, S3SecretRef). sigs.k8s.io/yaml
# ignores unknown keys, so a misspelt key is silently dropped there: refused here.
_SECRET_REF = {"type": "object", "additionalProperties": False, "required": ["secretName", "accessKeyKey", "secretKeyKey"],
               "properties": {"secretName": {"type": "string", "minLength": 1},
                              "accessKeyKey": {"type": "string", "minLength": 1},
                              "secretKeyKey": {"type": "string", "minLength": 1}}}
_CREDENTIALS = {"type": "object", "additionalProperties": False,
                "properties": {"fromEnv": {"type": "boolean"}, "secretRef": _SECRET_REF},
                "if": {"properties": {"fromEnv": {"const": False}}}, "then": {"required": ["secretRef"]}}
_S3_COMMON = {"endpoint": {"type": "string"}, "region": {"type": "string"}, "disableSSL": {"type": "boolean"},
              "forcePathStyle": {"type": "boolean"}, "maxRetries": {"type": "integer"}, "credentials": _CREDENTIALS}
KFP_PROVIDERS_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "minio": {"type": "object"}, "gs": {"type": "object"},
        "s3": {"type": "object", "additionalProperties": False, "properties": {
            "default": {"type": "object", "additionalProperties": False, "required": ["credentials"],
                        "properties": _S3_COMMON},
            "Overrides": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                      "required": ["credentials"],
                                                      "properties": {**_S3_COMMON, "bucketName": {"type": "string"},
                                                                     "keyPrefix": {"type": "string"}}}}}},
    },
}


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(kustomize_build()) if doc]


def _one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def test_kustomize_builds_the_namespace_identity_rbac_and_launcher_config(objects):
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ConfigMap", "kfp-launcher"), ("Namespace", "searchtune"), ("Role", "searchtune-pipeline-runner"),
        ("RoleBinding", "searchtune-pipeline-runner"), ("ServiceAccount", "searchtune-pipeline-runner")]
    # Never a Secret: placeholders must not land in a cluster through `kubectl apply -k`.
    assert all(o["metadata"].get("namespace") == "searchtune" for o in objects if o["kind"] != "Namespace")


def test_the_namespace_overlay_moves_every_object_and_the_bindings_subject(objects):
    moved = [doc for doc in yaml.safe_load_all(kustomize_build(MANIFESTS / "overlays" / "team-namespace")) if doc]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in moved) == sorted(
        (o["kind"], "team-search" if o["kind"] == "Namespace" else o["metadata"]["name"]) for o in objects)
    assert all(o["metadata"].get("namespace") == "team-search" for o in moved if o["kind"] != "Namespace")
    assert _one(moved, "RoleBinding")["subjects"][0]["namespace"] == "team-search"
    assert "searchtune\n" not in yaml.safe_dump_all(moved).replace("part-of: searchtune\n", "")


@pytest.mark.parametrize("path", ["kustomize build", "s3-secret.template.yaml"])
def test_core_kinds_pass_kubernetes_validate_strict(objects, path):
    documents = objects if path == "kustomize build" else \
        list(yaml.safe_load_all((MANIFESTS / "base" / path).read_text(encoding="utf-8")))
    for obj in documents:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path}: {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_the_role_grants_training_jobs_pods_and_logs_in_its_namespace_only(objects):
    role, binding = _one(objects, "Role"), _one(objects, "RoleBinding")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}
    job_verbs = {"create", "get", "list", "watch", "patch", "delete"}
    assert granted[("kubeflow.org", "pytorchjobs")] == job_verbs
    assert granted[("trainer.kubeflow.org", "trainjobs")] == job_verbs
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("", "pods/log")] == {"get"}
    assert granted[("", "events")] == {"list", "watch"}
    # Argo's executor in every step pod writes its step's results (workflow-rbac.md's minimum).
    assert granted[("argoproj.io", "workflowtaskresults")] == {"create", "patch"}
    # No wildcard anywhere; Secrets and ConfigMaps only by name, read only.
    assert not any("*" in rule[key] for rule in role["rules"] for key in ("apiGroups", "resources", "verbs"))
    named = {rule["resources"][0]: rule for rule in role["rules"] if "resourceNames" in rule}
    assert named["secrets"]["resourceNames"] == ["searchtune-s3"] and named["secrets"]["verbs"] == ["get"]
    assert named["configmaps"]["resourceNames"] == ["kfp-launcher"] and named["configmaps"]["verbs"] == ["get"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "searchtune-pipeline-runner",
                                    "namespace": "searchtune"}]


def test_the_training_crds_know_the_resources_the_role_names():
    crds = MANIFESTS.parent.parent / "shared" / "schemas" / "crds"
    if not crds.is_dir():
        pytest.fail(f"{crds} is missing: the shared CRD schemas sit beside the repository")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large: libyaml reads them 10x faster
    names = {(doc["spec"]["group"], doc["spec"]["names"]["plural"])
             for path in crds.glob("*.yaml") for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader)
             if doc}
    assert {("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")} <= names


def test_the_launcher_config_is_what_kfp_reads_and_matches_the_cluster_profile(objects):
    data = _one(objects, "ConfigMap")["data"]
    assert set(data) == {"defaultPipelineRoot", "providers"}
    providers = yaml.safe_load(data["providers"])
    jsonschema.validate(providers, KFP_PROVIDERS_SCHEMA)
    default = providers["s3"]["default"]
    profile = ClusterProfile()
    assert data["defaultPipelineRoot"] == profile.pipeline_root
    scheme, _, host = profile.s3.endpoint.partition("://")
    # KFP wants host:port and says the scheme with disableSSL.
    assert default["endpoint"] == host and default["disableSSL"] is (scheme == "http")
    assert default["region"] == profile.s3.region and default["forcePathStyle"] is True
    assert default["credentials"] == {"fromEnv": False, "secretRef": {
        "secretName": profile.s3.secret_name, "accessKeyKey": profile.s3.access_key_key,
        "secretKeyKey": profile.s3.secret_key_key}}


def test_the_launcher_schema_refuses_a_misspelt_key():
    with pytest.raises(jsonschema.ValidationError, match="'forcePathstyle' was unexpected"):
        jsonschema.validate({"s3": {"default": {"forcePathstyle": True, "credentials": {"fromEnv": True}}}},
                            KFP_PROVIDERS_SCHEMA)


def test_the_secret_template_holds_placeholders_never_a_key():
    template = yaml.safe_load((MANIFESTS / "base" / "s3-secret.template.yaml").read_text(encoding="utf-8"))
    profile = ClusterProfile()
    assert template["metadata"]["name"] == profile.s3.secret_name
    assert set(template["stringData"]) == {profile.s3.access_key_key, profile.s3.secret_key_key}
    assert all(re.fullmatch(r"<[^<>]+>", value) for value in template["stringData"].values())
    assert "data" not in template


def test_checkov_reports_no_unexplained_failure_on_the_manifests(checkov_scan):
    records = checkov_scan["manifests"]
    assert {r["file_path"].split("/")[-1] for r in records} == {"all.yaml", "s3-secret.template.yaml"}
    assert unexplained_findings(records) == []
