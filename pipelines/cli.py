"""The ``searchtune`` command line.

``searchtune run --local`` runs the KFP pipeline on this machine with
``kfp.local.SubprocessRunner``; ``searchtune compile`` writes the pipeline YAML for a
cluster profile, ``submit`` (or ``run`` without ``--local``) starts it on Kubeflow
Pipelines, ``compare`` puts runs side by side; ``prepare``/``mine``/``score``/``train``/
``evaluate``/``sample-data`` run one step on files.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from components.jsonl_files import DataError
from pipelines.config_flags import add_config_flags, config_from_flags

logger = logging.getLogger("searchtune")

DEFAULT_RUNS_DIR = Path("runs")


def _add_split_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-data", required=True, help="training rows (JSONL)")
    parser.add_argument("--test-data", help="test rows (JSONL)")
    parser.add_argument("--corpus", help="global pool passages, {id, text} JSONL")
    parser.add_argument("--output-dir", required=True)


def _fetch_inputs(args: argparse.Namespace, *names: str) -> None:
    """Step commands take ``s3://`` URIs, as the pipeline does: each named input is fetched
    to a temporary folder (removed at exit) and checked to exist before any work."""
    from components.data_sources import fetch_input

    work = tempfile.mkdtemp(prefix="searchtune-inputs-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    for name in names:
        value = getattr(args, name, None)
        if value:
            setattr(args, name, str(fetch_input(value, work)))


def _command_sample_data(args: argparse.Namespace) -> int:
    from components.sample_data import SampleDataConfig, generate_sample_data

    files = generate_sample_data(args.output_dir, config_from_flags(SampleDataConfig, args))
    print(f"rows:   {files.rows}\ncorpus: {files.corpus}")
    return 0


def _command_prepare(args: argparse.Namespace) -> int:
    from components.prepare import PrepareConfig, prepare_training_data

    _fetch_inputs(args, "train_data", "test_data", "corpus")
    result = prepare_training_data(args.train_data, args.output_dir, config_from_flags(PrepareConfig, args),
                                   test_path=args.test_data, corpus_path=args.corpus)
    print(result.report_markdown.read_text(encoding="utf-8"))
    return 0


def _command_mine(args: argparse.Namespace) -> int:
    from components.mine import MineConfig, mine_hard_negatives

    _fetch_inputs(args, "train_data", "test_data", "corpus")
    result = mine_hard_negatives(args.train_data, args.output_dir,
                                 config_from_flags(MineConfig, args),
                                 test_path=args.test_data, corpus_path=args.corpus)
    print(json.dumps(result.stats, indent=2))
    return 0


def _command_score(args: argparse.Namespace) -> int:
    from components.score import ScoreConfig, score_with_teacher

    _fetch_inputs(args, "train_data")
    print(score_with_teacher(args.train_data, args.output_dir, config_from_flags(ScoreConfig, args),
                             pool_embeddings=args.pool_embeddings))
    return 0


def _command_train(args: argparse.Namespace) -> int:
    from components.train import TrainConfig, fine_tune

    _fetch_inputs(args, "train_data")
    result = fine_tune(args.train_data, args.output_dir, config_from_flags(TrainConfig, args))
    print(f"model: {result.model_dir}\nfinal loss: {result.summary['final_loss']}")
    return 0


def _command_train_replica(args: argparse.Namespace) -> int:
    from components.train import TrainConfig
    from components.train_replica import ReplicaConfig, run_replica

    config = config_from_flags(ReplicaConfig, args, train=config_from_flags(TrainConfig, args))
    result = run_replica(config)
    if result.output:
        print(f"model: {result.output}\nsteps: {result.global_step}")
    return 0


def _command_render_job(args: argparse.Namespace) -> int:
    import yaml

    from pipelines.cluster_profile import load_cluster_profile
    from pipelines.parameters import PRESETS
    from pipelines.training_job import placeholder_inputs, render_job, train_arguments

    profile = load_cluster_profile(args.profile)
    kind = args.kind or profile.training.executor
    if kind == "local":
        raise ValueError("--kind: the profile's training.executor is local (no job to render); pass --kind "
                         "pytorchjob or --kind trainjob")
    parameters = PRESETS[args.preset].with_overrides(**_set_items(args.set or []))
    values = parameters.as_arguments()
    values["model"] = values.pop("student_model")
    inputs = placeholder_inputs(profile, train_arguments(values, profile), args.train_data or "",
                                args.model_output or "", args.run_id)
    job = render_job(profile, inputs, kind)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(yaml.safe_dump(job, sort_keys=False, allow_unicode=True), encoding="utf-8")
    print(args.output)
    return 0


def _command_evaluate(args: argparse.Namespace) -> int:
    from components.evaluate import EvaluateConfig, evaluate_retrieval

    _fetch_inputs(args, "test_data", "corpus")
    result = evaluate_retrieval(args.test_data, args.corpus, args.base_model, args.finetuned_model,
                                args.output_dir, config_from_flags(EvaluateConfig, args),
                                base_passage_embeddings=args.base_embeddings)
    print(Path(result.report_md_path).read_text(encoding="utf-8"))
    return 0


def _load_profile(args: argparse.Namespace):
    """The cluster profile named by ``--profile`` (the defaults without one) and its text."""
    from pipelines.cluster_profile import ClusterProfile, load_cluster_profile

    if not args.profile:
        return ClusterProfile(), ""
    return load_cluster_profile(args.profile), Path(args.profile).read_text(encoding="utf-8")
def _read_flat_metrics(path: Path) -> dict[str, float]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON: {error}") from None
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ValueError(f"{path}: expected flat metrics {{name: number}} as a run folder's metrics.json holds "
                         "(global_recall_at_1_delta, global_recall_at_1_p_value, ...)")
    return metrics


def _command_gate(args: argparse.Namespace) -> int:
    from components.gate import GateConfig, decide_promotion

    decision = decide_promotion(_read_flat_metrics(args.metrics), args.output_dir,
                                config_from_flags(GateConfig, args))
    print(decision.report_path.read_text(encoding="utf-8"))
    return 0 if decision.promote else 1


def _command_parity(args: argparse.Namespace) -> int:
    from components.parity import ParityConfig, check_serving_parity

    result = check_serving_parity(args.model, args.endpoint, args.output_dir, config_from_flags(ParityConfig, args))
    print(result.report_path.read_text(encoding="utf-8"))
    return 0


def _command_promote(args: argparse.Namespace) -> int:
    from components.promote import PromoteConfig, promote_model

    result = promote_model(args.model, config_from_flags(PromoteConfig, args))
    print(f"model:  {result.model_uri}" + ("" if result.copied else " (already there)"))
    if result.helm_manifest:
        print(result.helm_manifest if args.helm_dry_run else f"helm release revision {result.helm_revision}")
    print(f"serve:  {result.serve_command}")
    return 0


def _command_serve(args: argparse.Namespace) -> int:
    from components.serving import ServeConfig, serve

    serve(config_from_flags(ServeConfig, args))
    return 0


def _command_compile(args: argparse.Namespace) -> int:
    from pipelines.cluster_compile import compile_for_profile

    profile, text = _load_profile(args)
    print(compile_for_profile(args.output, profile, text))
    return 0


def _command_pull_model(args: argparse.Namespace) -> int:
    from components.serving_model import pull_model

    pulled = pull_model(args.uri, args.output, serving_engine=args.serving_engine,
                        allow_incompatible_profile=args.allow_incompatible_profile)
    print(pulled.path)
    return 0


def _command_push_model(args: argparse.Namespace) -> int:
    from components.model_profiles import ProfileOverrides
    from components.model_store import push_model

    pushed = push_model(args.model, args.uri, config_from_flags(ProfileOverrides, args))
    kind = "cross-encoder" if pushed.cross_encoder else "embedding model"
    print(f"{pushed.uri} ({kind}: {pushed.files} files, {pushed.total_bytes / 1e6:.1f} MB, sealed)")
    return 0


def _pipeline_parameters(args: argparse.Namespace):
    """The preset with --train-data/--test-data/--corpus and every --set applied; each
    value parsed strictly and every step's config built, so a bad value stops here,
    before KFP starts."""
    from pipelines.parameters import PRESETS

    overrides: dict = {}
    for name in ("train_data", "test_data", "corpus"):
        value = getattr(args, name)
        if value:
            overrides[name] = value if value.startswith("s3://") else str(Path(value).resolve())
    overrides.update(_set_items(args.set or []))
    preset = PRESETS[args.preset or ("local" if getattr(args, "local", False) else "recipe")]
    return preset.with_overrides(**overrides)


def _set_items(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items as raw strings (the parameters parse them strictly)."""
    overrides = {}
    for item in items:
        key, equals, raw = item.partition("=")
        if not equals:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.replace("-", "_")] = raw
    return overrides


def _command_submit(args: argparse.Namespace) -> int:
    from pipelines.submit import check_models_reach_the_pods, kfp_client, run_arguments, submit_run, wait_for_run

    profile, text = _load_profile(args)
    local_only = [flag for flag, value in (("--output-dir", getattr(args, "output_dir", None)),
                                           ("--cache-dir", getattr(args, "cache_dir", None))) if value]
    if local_only:
        raise ValueError(f"{local_only[0]}: only a local run (--local) has a run folder and a step cache here; "
                         "a cluster run keeps its artifacts under the profile's pipeline_root")
    for name in ("train_data", "test_data", "corpus"):
        value = getattr(args, name, None)
        if value and not value.startswith("s3://"):
            raise ValueError(f"--{name.replace('_', '-')}: a cluster run reads its data from S3; "
                             f"give an s3:// URI, not {value!r}")
    parameters = _pipeline_parameters(args)
    if args.namespace and args.namespace != profile.namespace:
        # The namespace is the run's and its training job's: the profile the step reads says so too.
        from dataclasses import replace

        from pipelines.cluster_profile import profile_to_yaml

        profile = replace(profile, namespace=args.namespace)
        text = profile_to_yaml(profile)
    api = kfp_client(args.host, profile.namespace, args.token_file, args.kube_context)
    if not args.models_in_image:
        check_models_reach_the_pods(parameters.as_arguments())
    explicit = {item.partition("=")[0].replace("-", "_") for item in args.set or []}
    run = submit_run(api, run_arguments(parameters.as_arguments(), explicit), profile, text,
                     experiment=args.experiment, run_name=args.run_name, package=args.output,
                     enable_caching=not args.no_cache)
    print(f"run {run.run_id} submitted: {run.link}", flush=True)
    if not args.wait:
        return 0
    finished = wait_for_run(api, run.run_id, timeout_s=args.timeout, poll_s=args.poll_seconds)
    if finished.state == "SUCCEEDED":
        print(f"run {run.run_id} succeeded: {run.link}")
        return 0
    print(f"searchtune: error: run {run.run_id} {finished.state.lower()}"
          + (f": {finished.message}" if finished.message else "") + f" ({run.link})", file=sys.stderr)
    return 1


def _command_run(args: argparse.Namespace) -> int:
    if not args.local:
        return _command_submit(args)
    from kfp import local

    from pipelines.pipeline import searchtune_pipeline

    # The pipeline's base image and display names are for the cluster; locally the package
    # is installed in this Python, which is what the runner's warnings ask about.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    parameters = _pipeline_parameters(args)
    run_dir = Path(args.output_dir or DEFAULT_RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "parameters.json").write_text(json.dumps(parameters.as_arguments(), indent=2) + "\n",
                                             encoding="utf-8")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "artifacts"),
               enable_caching=not args.no_cache, cache_root=str(Path(args.cache_dir).expanduser().resolve())
               if args.cache_dir else None)
    started = time.time()
    outputs = searchtune_pipeline(**parameters.as_arguments())
    report = Path(outputs.outputs["report"].path)
    metrics = {**outputs.outputs["metrics"].metadata, **outputs.outputs["gate_metrics"].metadata}
    (run_dir / "report.md").write_text(report.read_text(encoding="utf-8"), encoding="utf-8")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(report.read_text(encoding="utf-8"))
    gate_report = Path(outputs.outputs["gate_report"].path).read_text(encoding="utf-8")
    (run_dir / "gate.md").write_text(gate_report, encoding="utf-8")
    print(gate_report)
    # Promotion runs under the gate's condition, so it is not a pipeline output: find its report.
    promotions = sorted(run_dir.glob("artifacts/**/promote-model/promotion"), key=lambda p: p.stat().st_mtime)
    promotion = promotions[-1].read_text(encoding="utf-8") if metrics.get("gate_promote") == 1.0 and promotions \
        else None
    if promotion:
        print(promotion)
    print(f"run folder: {run_dir} ({time.time() - started:.0f} s)")
    print(run_ending(gate_report, promotion))
    return 0


def run_ending(gate_report: str, promotion: str | None) -> str:
    """The last lines of a local run: the gate's decision, then (when it promoted) the one
    command that serves the promoted model with its search page."""
    lines = gate_report.splitlines()
    verdict = lines[0].removeprefix("# Quality gate: ") if lines else "no decision"
    reasons = [line.removeprefix("- ") for line in lines[1:] if line.startswith("- ")]
    ending = [f"quality gate: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else "")]
    if promotion is not None:
        command = next((line.strip() for line in promotion.splitlines() if line.strip().startswith("searchtune serve")),
                       None)
        if command:
            ending += ["serve the promoted model and its search page:", f"    {command}"]
    return "\n".join(ending)


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    from pipelines.submit import DEFAULT_EXPERIMENT, TOKEN_FILE_ENV

    group = parser.add_argument_group("cluster (KFP)")
    group.add_argument("--host", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT, else the kubeconfig)")
    group.add_argument("--namespace", help="KFP profile namespace (default: the cluster profile's)")
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment the run goes into")
    group.add_argument("--run-name", help="the run's name (default: searchtune <time>)")
    group.add_argument("--profile", help="cluster profile YAML (default: the built-in defaults)")
    group.add_argument("--token-file", help=f"file holding a bearer token for the KFP API (or ${TOKEN_FILE_ENV})")
    group.add_argument("--kube-context", help="kubeconfig context when no --host is given")
    group.add_argument("--wait", action="store_true", help="follow the run to its end; non-zero exit on failure")
    group.add_argument("--timeout", type=float, default=3 * 24 * 3600, help="seconds --wait follows the run")
    group.add_argument("--poll-seconds", type=float, default=10.0, help="seconds between state checks")
    group.add_argument("--output", type=Path, help="also keep the compiled pipeline YAML here")
    group.add_argument("--models-in-image", action="store_true",
                       help="the images carry the models in their Hugging Face cache: allow hub names for "
                            "student_model and teacher_model (by default they must be s3:// folders)")


def build_parser() -> argparse.ArgumentParser:
    from components.evaluate import EvaluateConfig
    from components.mine import MineConfig
    from components.prepare import PrepareConfig
    from components.sample_data import SampleDataConfig
    from components.score import ScoreConfig
    from components.train import TrainConfig
    from pipelines.compare import add_compare_options, compare_command
    from pipelines.parameters import PRESETS

    parser = argparse.ArgumentParser(prog="searchtune", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline (on this machine with --local, else on KFP)")
    run.add_argument("--local", action="store_true", help="run on this machine with kfp.local")
    run.add_argument("--preset", choices=sorted(PRESETS),
                     help="parameter preset (default: local with --local, recipe on a cluster)")
    run.add_argument("--train-data", help="training rows (JSONL path or s3:// URI); default: built-in sample")
    run.add_argument("--test-data", help="test rows; default: a 9:1 split of the training rows")
    run.add_argument("--corpus", help="extra {id,text} passages for the global pool")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a pipeline parameter")
    run.add_argument("--output-dir", help="run folder (default: runs/<timestamp>)")
    run.add_argument("--cache-dir", help="KFP step cache (default: inside the run folder)")
    run.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    _add_submit_options(run)
    run.set_defaults(handler=_command_run)

    submit = commands.add_parser("submit", help="compile with the cluster profile and start a run on KFP")
    submit.add_argument("--preset", choices=sorted(PRESETS), help="parameter preset (default: recipe)")
    submit.add_argument("--train-data", help="training rows (s3:// URI); default: built-in sample")
    submit.add_argument("--test-data", help="test rows (s3:// URI)")
    submit.add_argument("--corpus", help="extra {id,text} passages (s3:// URI)")
    submit.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a pipeline parameter")
    submit.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    _add_submit_options(submit)
    submit.set_defaults(handler=_command_submit)

    compile_ = commands.add_parser("compile", help="write the pipeline YAML for a cluster")
    compile_.add_argument("--output", type=Path, default=Path("searchtune_pipeline.yaml"))
    compile_.add_argument("--profile", help="cluster profile YAML (default: the built-in defaults)")
    compile_.set_defaults(handler=_command_compile)

    compare = commands.add_parser("compare", help="runs side by side: parameters that differ, every metric")
    add_compare_options(compare)
    compare.set_defaults(handler=compare_command)

    sample = commands.add_parser("sample-data", help="write the built-in e-commerce sample data")
    sample.add_argument("--output-dir", required=True)
    add_config_flags(sample, SampleDataConfig)
    sample.set_defaults(handler=_command_sample_data)

    prepare = commands.add_parser("prepare", help="validate, split 9:1, build the global pool")
    _add_split_files(prepare)
    add_config_flags(prepare, PrepareConfig)
    prepare.set_defaults(handler=_command_prepare)

    mine = commands.add_parser("mine", help="mine hard negatives")
    _add_split_files(mine)
    add_config_flags(mine, MineConfig)
    mine.set_defaults(handler=_command_mine)

    score = commands.add_parser("score", help="teacher scores for knowledge distillation")
    score.add_argument("--train-data", required=True)
    score.add_argument("--output-dir", required=True)
    score.add_argument("--pool-embeddings", help="base_embeddings folder written by mine: an embedding teacher "
                       "that is mine's model reuses its passage vectors")
    add_config_flags(score, ScoreConfig)
    score.set_defaults(handler=_command_score)

    train = commands.add_parser("train", help="fine-tune with FlagEmbedding under torchrun")
    train.add_argument("--train-data", required=True)
    train.add_argument("--output-dir", required=True)
    add_config_flags(train, TrainConfig)
    train.set_defaults(handler=_command_train)

    replica = commands.add_parser("train-replica", help="one pod of the training job: rows and model from S3, "
                                  "checkpoints and the fine-tuned model to S3, resumes from the newest checkpoint")
    replica.add_argument("--train-data", required=True, help="scored rows: an s3:// object or a local JSONL file")
    replica.add_argument("--output", required=True, help="the fine-tuned model: an s3:// prefix or a local folder "
                         "(sealed with a completion marker)")
    from components.train_replica import ReplicaConfig

    add_config_flags(replica, ReplicaConfig, skip=("train_data", "output"))
    # The job decides nodes and processes per node (PET_* / MASTER_* variables).
    add_config_flags(replica, TrainConfig, skip=("nnodes", "nproc_per_node"))
    replica.set_defaults(handler=_command_train_replica)

    render = commands.add_parser("render-job", help="write the training job (PyTorchJob or TrainJob) the launcher "
                                 "would create, for review or GitOps")
    render.add_argument("--profile", type=Path, help="cluster profile YAML (default: the recipe's layout)")
    render.add_argument("--kind", choices=["pytorchjob", "trainjob"], help="default: the profile's training.executor")
    render.add_argument("--output", type=Path, required=True, help="where to write the job's YAML")
    render.add_argument("--preset", default="recipe", choices=sorted(PRESETS), help="training parameter preset")
    render.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a pipeline parameter")
    render.add_argument("--train-data", help="scored rows' s3:// URI (default: a placeholder under pipeline_root)")
    render.add_argument("--model-output", help="the model's s3:// URI (default: a placeholder under pipeline_root)")
    render.add_argument("--run-id", default="example-run", help="the KFP run id in labels and paths")
    render.set_defaults(handler=_command_render_job)

    evaluate = commands.add_parser("evaluate", help="base vs fine-tuned retrieval report")
    evaluate.add_argument("--test-data", required=True)
    evaluate.add_argument("--corpus", required=True)
    evaluate.add_argument("--base-model", required=True)
    evaluate.add_argument("--finetuned-model", required=True)
    evaluate.add_argument("--base-embeddings", help="base_embeddings folder written by mine")
    evaluate.add_argument("--output-dir", required=True)
    add_config_flags(evaluate, EvaluateConfig)
    evaluate.set_defaults(handler=_command_evaluate)

    pull = commands.add_parser("pull-model", help="download a finished model folder from S3 for serving")
    pull.add_argument("--uri", required=True, help="s3://bucket/prefix/model/ with searchtune's completion marker")
    pull.add_argument("--output", required=True, type=Path, help="the local model folder to create")
    pull.add_argument("--serving-engine", choices=["sglang"],
                      help="refuse a model this engine would serve with other vectors than it was trained to give")
    pull.add_argument("--allow-incompatible-profile", action="store_true",
                      help="with --serving-engine: keep such a model, with a loud warning")
    pull.set_defaults(handler=_command_pull_model)

    from components.model_profiles import ProfileOverrides

    push = commands.add_parser("push-model", help="upload a base model to S3 for a cluster run (pods have no hub)")
    push.add_argument("--model", required=True,
                      help="a model folder, a Hugging Face id (cached, else downloaded) or builtin:<name>")
    push.add_argument("--uri", required=True, help="s3://bucket/prefix/<model-name>/ (sealed with a completion marker)")
    add_config_flags(push, ProfileOverrides)
    push.set_defaults(handler=_command_push_model)
    from components.gate import GateConfig

    gate = commands.add_parser("gate", help="promote or not, from a run's metrics (exit 0: promote, 1: not)")
    gate.add_argument("--metrics", type=Path, required=True, help="flat metrics JSON (a run folder's metrics.json)")
    gate.add_argument("--output-dir", required=True)
    add_config_flags(gate, GateConfig)
    gate.set_defaults(handler=_command_gate)

    from components.promote import PromoteConfig

    promote = commands.add_parser("promote", help="copy a model to the serving location; upgrade the Helm release")
    promote.add_argument("--model", required=True, help="the fine-tuned model folder")
    add_config_flags(promote, PromoteConfig)
    promote.set_defaults(handler=_command_promote)

    from components.parity import ParityConfig

    parity = commands.add_parser("parity", help="served vectors vs the trained model's on a fixed probe set")
    parity.add_argument("--model", required=True, help="the trained model (folder with its profile)")
    parity.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parity.add_argument("--output-dir", required=True)
    add_config_flags(parity, ParityConfig)
    parity.set_defaults(handler=_command_parity)

    from components.serving import ServeConfig

    serve = commands.add_parser("serve", help="OpenAI-compatible embeddings API (and --ui: the search page)")
    add_config_flags(serve, ServeConfig, skip=("ui", "access_log"))
    serve.add_argument("--ui", action="store_true", help="also serve the base vs fine-tuned search page at /")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_command_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except DataError as error:
        print(f"searchtune: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"searchtune: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A store or API that cannot be reached; the message names it.
        print(f"searchtune: error: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        # A failed pipeline step or training run: its own log, above, says why.
        print(f"searchtune: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
