"""The ``searchtune`` command line.

``searchtune run --local`` runs the KFP pipeline on this machine with
``kfp.local.SubprocessRunner``; ``searchtune compile`` writes the pipeline YAML for a
cluster; ``prepare``/``mine``/``score``/``train``/``evaluate``/``sample-data`` run one
step on files.
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


def _command_evaluate(args: argparse.Namespace) -> int:
    from components.evaluate import EvaluateConfig, evaluate_retrieval

    _fetch_inputs(args, "test_data", "corpus")
    result = evaluate_retrieval(args.test_data, args.corpus, args.base_model, args.finetuned_model,
                                args.output_dir, config_from_flags(EvaluateConfig, args),
                                base_passage_embeddings=args.base_embeddings)
    print(Path(result.report_md_path).read_text(encoding="utf-8"))
    return 0


def _command_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.pipeline import searchtune_pipeline

    compiler.Compiler().compile(searchtune_pipeline, str(args.output))
    print(args.output)
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
    for item in args.set or []:
        key, equals, raw = item.partition("=")
        if not equals:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.replace("-", "_")] = raw
    return PRESETS[args.preset].with_overrides(**overrides)


def _command_run(args: argparse.Namespace) -> int:
    if not args.local:
        print("only --local runs are implemented; compile the pipeline and submit it with the KFP UI or client",
              file=sys.stderr)
        return 2
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
    metrics = outputs.outputs["metrics"].metadata
    (run_dir / "report.md").write_text(report.read_text(encoding="utf-8"), encoding="utf-8")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(report.read_text(encoding="utf-8"))
    print(f"run folder: {run_dir} ({time.time() - started:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from components.evaluate import EvaluateConfig
    from components.mine import MineConfig
    from components.prepare import PrepareConfig
    from components.sample_data import SampleDataConfig
    from components.score import ScoreConfig
    from components.train import TrainConfig
    from pipelines.parameters import PRESETS

    parser = argparse.ArgumentParser(prog="searchtune", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline")
    run.add_argument("--local", action="store_true", help="run on this machine with kfp.local")
    run.add_argument("--preset", default="local", choices=sorted(PRESETS), help="parameter preset")
    run.add_argument("--train-data", help="training rows (JSONL path or s3:// URI); default: built-in sample")
    run.add_argument("--test-data", help="test rows; default: a 9:1 split of the training rows")
    run.add_argument("--corpus", help="extra {id,text} passages for the global pool")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a pipeline parameter")
    run.add_argument("--output-dir", help="run folder (default: runs/<timestamp>)")
    run.add_argument("--cache-dir", help="KFP step cache (default: inside the run folder)")
    run.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    run.set_defaults(handler=_command_run)

    compile_ = commands.add_parser("compile", help="write the pipeline YAML for a cluster")
    compile_.add_argument("--output", type=Path, default=Path("searchtune_pipeline.yaml"))
    compile_.set_defaults(handler=_command_compile)

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

    evaluate = commands.add_parser("evaluate", help="base vs fine-tuned retrieval report")
    evaluate.add_argument("--test-data", required=True)
    evaluate.add_argument("--corpus", required=True)
    evaluate.add_argument("--base-model", required=True)
    evaluate.add_argument("--finetuned-model", required=True)
    evaluate.add_argument("--base-embeddings", help="base_embeddings folder written by mine")
    evaluate.add_argument("--output-dir", required=True)
    add_config_flags(evaluate, EvaluateConfig)
    evaluate.set_defaults(handler=_command_evaluate)
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
    except RuntimeError as error:
        # A failed pipeline step or training run: its own log, above, says why.
        print(f"searchtune: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
