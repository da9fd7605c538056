"""Promote step: put a fine-tuned model where serving takes it from, and point serving at it.

The model is copied, sealed with the object store's completion marker, to
``<serving_uri>/<served_model_name>-<content digest>``: a folder or an ``s3://`` prefix.
The digest (of every file's SHA-256) makes each promoted model a new path, so serving
never reads a folder that is being overwritten, and promoting the same model twice is a
no-op. On a cluster (``helm_release`` set) the serving chart's release is then upgraded to
the new path (``model.uri``, ``model.name``) through helm-python-sdk, keeping the release's
other values; ``helm_dry_run`` renders the upgrade instead (``helm template``), as the
tests and a cautious first run do. Locally, the result carries the ``searchtune serve``
command for the promoted copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from components.object_store import copy_folder, folder_manifest, is_complete_folder, is_s3_uri, join_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromoteConfig:
    """Where a promoted model goes and what serves it.

    Attributes:
        serving_uri: the folder or ``s3://bucket/prefix`` under which promoted models live.
        served_model_name: the name clients pass as ``model`` (the chart's ``model.name``).
        helm_release: the serving chart's release to upgrade; empty: no cluster.
        helm_namespace: the release's namespace.
        helm_chart: the chart (a folder, a packaged chart, or an ``oci://`` reference).
        helm_dry_run: render the upgraded release offline instead of applying it.
        helm_timeout_s: how long the upgrade waits for the new pods to become ready.
    """

    serving_uri: str = ""
    served_model_name: str = "searchtune-embedder"
    helm_release: str = ""
    helm_namespace: str = "default"
    helm_chart: str = "helm/searchtune-serving"
    helm_dry_run: bool = False
    helm_timeout_s: int = 900

    def __post_init__(self) -> None:
        if not self.serving_uri:
            raise ValueError("promote: serving_uri is required (a folder or s3://bucket/prefix for promoted models)")
        if not self.served_model_name or "/" in self.served_model_name:
            raise ValueError(f"promote: served_model_name must be a non-empty name without '/', "
                             f"got {self.served_model_name!r}")
        if self.helm_release and not is_s3_uri(self.serving_uri):
            raise ValueError(f"promote: helm_release needs an s3:// serving_uri (the cluster pulls the model from "
                             f"S3), got {self.serving_uri!r}")
        if self.helm_timeout_s < 1:
            raise ValueError(f"promote: helm_timeout_s must be positive, got {self.helm_timeout_s}")


@dataclass(frozen=True)
class PromotionResult:
    """What promotion did.

    Attributes:
        model_uri: where the promoted model now lives (sealed).
        version: the content digest in its name.
        copied: False when that exact model was already there.
        helm_manifest: the upgraded release's manifest (rendered, for a dry run); empty without Helm.
        helm_revision: the release's new revision (0 for a dry run or without Helm).
        serve_command: the command that serves the promoted model on this machine.
    """

    model_uri: str
    version: str
    copied: bool
    helm_manifest: str = ""
    helm_revision: int = 0
    serve_command: str = ""


def _content_digest(model_dir: Path) -> str:
    files = folder_manifest(model_dir)["files"]
    listing = json.dumps({name: entry["sha256"] for name, entry in files.items()}, sort_keys=True)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()[:12]


def _helm_values(model_uri: str, config: PromoteConfig) -> dict:
    return {"model": {"uri": model_uri.rstrip("/") + "/", "name": config.served_model_name}}


def _upgrade_release(model_uri: str, config: PromoteConfig) -> tuple[str, int]:
    import helm_python as helm

    values = _helm_values(model_uri, config)
    where = f"release {config.helm_release!r} in namespace {config.helm_namespace!r}"
    try:
        if config.helm_dry_run:
            chart = helm.Chart.load(config.helm_chart)
            rendered = chart.render(chart.merge_values(values), name=config.helm_release,
                                    namespace=config.helm_namespace, is_upgrade=True)
            return "".join(f"---\n# Source: {path}\n{text}" for path, text in sorted(rendered.items())
                           if text.strip()), 0
        # helm-python-sdk reads ~/.kube/config or the in-cluster account, not $KUBECONFIG: pass it on.
        kubeconfig = os.environ.get("KUBECONFIG") or None
        with helm.Config(namespace=config.helm_namespace, kubeconfig_path=kubeconfig) as cluster:
            release = cluster.upgrade(config.helm_chart, config.helm_release, values,
                                      namespace=config.helm_namespace, reuse_values=True, wait="watcher",
                                      timeout=config.helm_timeout_s, rollback_on_failure=True,
                                      description=f"searchtune: serve {model_uri}")
        return str(release.get("manifest", "")), int(release.get("revision", 0) or 0)
    except helm.HelmError as error:
        raise RuntimeError(f"helm upgrade of {where} to model.uri={values['model']['uri']} failed: "
                           f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def promote_model(model_dir: str | os.PathLike, config: PromoteConfig) -> PromotionResult:
    """Copy the model to the serving location and, on a cluster, upgrade the serving release.

    Args:
        model_dir: the fine-tuned model folder (as the train step wrote it).
        config: where to, and which Helm release.

    Raises:
        FileNotFoundError: no model folder.
        RuntimeError: the Helm upgrade failed (the release is rolled back by Helm).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json)")
    version = _content_digest(model_dir)
    model_uri = join_uri(config.serving_uri, f"{config.served_model_name}-{version}")
    copied = not is_complete_folder(model_uri)
    if copied:
        copy_folder(model_dir, model_uri)
        logger.info("promoted %s → %s", model_dir, model_uri)
    else:
        logger.info("%s already holds this model (version %s): not copied again", model_uri, version)

    manifest, revision = "", 0
    if config.helm_release:
        manifest, revision = _upgrade_release(model_uri, config)
        logger.info("helm %s %s: model.uri=%s", "rendered" if config.helm_dry_run else "upgraded",
                    config.helm_release, model_uri)
    serve_command = shlex.join(["searchtune", "serve", "--model", model_uri,
                                "--served-model-name", config.served_model_name])
    return PromotionResult(model_uri=model_uri, version=version, copied=copied, helm_manifest=manifest,
                           helm_revision=revision, serve_command=serve_command)
