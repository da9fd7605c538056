"""Compile the pipeline for a cluster: the cluster profile applied to every step.

``pipelines/pipeline.py`` says *what* runs; the profile says *where*. Rather than fix an
image, resources or Secrets in the component decorators or the pipeline body, the
compiler re-traces the pipeline function with one extra pass at its end that configures
every task it created, with the task setters and ``kfp.kubernetes``:

* the image of the step's kind (``set_container_image``, which takes precedence over the
  decorator's ``base_image``), and its pull policy and pull Secrets;
* CPU and memory requests and limits, accelerator type and count;
* node selector and tolerations;
* the S3 credentials from the profile's Secret as ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` (``use_secret_as_env``), and the store's endpoint and region
  as plain variables. The profile names the Secret; no credential ever passes through
  the compiler, a pipeline parameter or the compiled YAML.

The profile's ``pipeline_root`` becomes the compiled default pipeline root. A step finds
its profile entry by its component's name, which starts with the entry's name
(``mine_negatives`` → ``steps.mine``, ``fine_tune_embedder`` → ``steps.fine_tune``): a
new step is configured as soon as its name follows that rule, and compiling fails, naming
it, when it does not.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

from pipelines.cluster_profile import ClusterProfile, StepResources, StepsProfile

logger = logging.getLogger(__name__)

# Steps that only drive the cluster (no torch) run in the launcher image; the rest in the
# steps image. With the ``local`` executor the fine-tune step trains in its own pod.
LAUNCHER_STEPS = frozenset({"fine_tune", "gate", "promote"})
STEP_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StepsProfile))

# Pipeline parameters the compiled YAML takes its defaults for from the profile (added to
# the pipeline by the training-job launcher work; passed only when the pipeline has them).
PROFILE_PIPELINE_PARAMETERS = ("train_executor", "cluster_profile")


def profile_step_name(component_name: str) -> str:
    """The ``steps`` entry for a component: the longest entry its name starts with.

    Raises:
        ValueError: when no entry matches (name the component after its step).
    """
    name = component_name.replace("-", "_")
    matches = [step for step in STEP_NAMES if name == step or name.startswith(step + "_")]
    if not matches:
        raise ValueError(f"pipeline step {component_name!r} has no entry in the cluster profile's steps "
                         f"({', '.join(STEP_NAMES)}): name its component after one of them")
    return max(matches, key=len)


def step_image(profile: ClusterProfile, step: str) -> str:
    if step == "fine_tune" and profile.training.executor == "local":
        return profile.images.train
    return profile.images.launcher if step in LAUNCHER_STEPS else profile.images.steps


def configure_task(task, profile: ClusterProfile) -> None:
    """Apply the profile's image, resources, scheduling and S3 settings to one task."""
    from kfp import kubernetes

    step = profile_step_name(task.component_spec.name)
    resources: StepResources = getattr(profile.steps, step)
    task.set_container_image(step_image(profile, step))
    kubernetes.set_image_pull_policy(task, profile.images.pull_policy)
    if profile.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(profile.image_pull_secrets))
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if resources.accelerator_count:
        task.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(resources.accelerator_count)
    for label, value in resources.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in resources.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator,
                                  value=toleration.value or None, effect=toleration.effect or None)
    kubernetes.use_secret_as_env(task, secret_name=profile.s3.secret_name,
                                 secret_key_to_env={profile.s3.access_key_key: "AWS_ACCESS_KEY_ID",
                                                    profile.s3.secret_key_key: "AWS_SECRET_ACCESS_KEY"})
    if profile.s3.endpoint:
        task.set_env_variable("AWS_ENDPOINT_URL", profile.s3.endpoint)
    task.set_env_variable("AWS_DEFAULT_REGION", profile.s3.region)
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "searchtune")
    kubernetes.add_pod_label(task, "searchtune.io/step", step.replace("_", "-"))


def pipeline_for_profile(profile: ClusterProfile, pipeline=None):
    """The pipeline re-traced with every task configured by ``profile``.

    Args:
        profile: the cluster profile.
        pipeline: a ``@dsl.pipeline`` component (default: the searchtune pipeline).
        enable_caching: False compiles every step with the cache off (``--no-cache``: a run
            created from an uploaded version ignores the client's own caching option).
    """
    from kfp import dsl
    from kfp.dsl import pipeline_context

    if pipeline is None:
        from pipelines.pipeline import searchtune_pipeline as pipeline
    function = pipeline.pipeline_func

    @functools.wraps(function)
    def configured(*args, **kwargs):
        outputs = function(*args, **kwargs)
        # The tasks are still open here: the pipeline context has not built the spec yet.
        for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
            configure_task(task, profile)
        return outputs

    return dsl.pipeline(name=pipeline.component_spec.name, description=pipeline.component_spec.description,
                        pipeline_root=profile.pipeline_root)(configured)


def profile_parameter(profile: ClusterProfile) -> str:
    """The profile as one line of YAML (a flow mapping, every field), for a pipeline parameter.

    One line because the KFP compiler copies parameter defaults into the compiled file's
    ``#`` header, where a multi-line value would break the YAML.
    """
    import yaml

    from pipelines.cluster_profile import profile_to_yaml

    text = yaml.safe_dump(yaml.safe_load(profile_to_yaml(profile)), default_flow_style=True, width=1 << 30,
                          sort_keys=False, allow_unicode=True).strip()
    assert "\n" not in text
    return text


def _disable_caching(path: Path) -> None:
    """Turn the step cache off in a compiled pipeline (every task, nested DAGs included)."""
    import yaml

    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    spec = documents[0]
    dags = [spec["root"]["dag"]] + [component["dag"] for component in spec.get("components", {}).values()
                                    if "dag" in component]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = False
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")


def compile_for_profile(output: str | os.PathLike, profile: ClusterProfile | None = None,
                        profile_text: str = "", pipeline=None, enable_caching: bool = True) -> Path:
    """Write the pipeline YAML for ``profile`` (the defaults when None); returns the path.

    Args:
        output: the YAML file to write.
        profile: the cluster profile (validated).
        profile_text: the profile file's text; when given, the pipeline's ``cluster_profile``
            parameter (when it has one) defaults to the profile as one line of YAML
            (:func:`profile_parameter`: Secret names, never a credential), else to "".
        pipeline: a ``@dsl.pipeline`` component (default: the searchtune pipeline).
    """
    from kfp import compiler

    profile = profile or ClusterProfile()
    configured = pipeline_for_profile(profile, pipeline)
    defaults = {"train_executor": profile.training.executor,
                "cluster_profile": profile_parameter(profile) if profile_text.strip() else ""}
    inputs = configured.component_spec.inputs or {}
    parameters = {name: defaults[name] for name in PROFILE_PIPELINE_PARAMETERS if name in inputs}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(configured, str(output), pipeline_parameters=parameters or None)
    if not enable_caching:
        _disable_caching(output)
    logger.info("compiled %s for namespace %s, pipeline root %s", output, profile.namespace,
                profile.pipeline_root)
    return output
