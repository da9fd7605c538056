"""Benchmark: `searchtune serve` throughput and latency against in-process encoding.

Starts ``searchtune serve`` (a child process on 127.0.0.1) on a model and drives it with
1, 4 and 16 concurrent clients (threads, each with its own official ``openai`` client, the
default base64 encoding), each sending a bounded number of requests of ``--texts-per-request``
texts. The peer, measured in the same run on the same texts: in-process encoding with the
same encoder and precision (``TextEncoder.encode_passages`` over all texts at once, the
way the pipeline's steps encode). Served vectors are checked against in-process ones
(cosine) so the figures are for correct answers. The peer is measured once up front and
again right before each run (the ratio uses the adjacent one: on a shared machine the load moves).

Prints a table and writes ``benchmarks/results/serving.json`` with the machine. Target
(issue 9): at 16 clients, at least 90% of in-process throughput.

    python benchmarks/serving.py                        # builtin e5-small, 1 and 32 texts/request
    python benchmarks/serving.py --texts-per-request 32 --requests-per-client 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.local_pipeline import machine  # noqa: E402
from components.embedding import EncodeConfig, TextEncoder  # noqa: E402
from components.model_profiles import resolve_model  # noqa: E402
from components.serving import ServeConfig, ServerProcess  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TARGET_RATIO = 0.90
logger = logging.getLogger("benchmarks.serving")


def sample_texts(count: int) -> list[str]:
    """Passages of the built-in sample corpus (seeded), as an indexing client would send."""
    from components.sample_data import SampleDataConfig, generate_sample_data

    with tempfile.TemporaryDirectory() as folder:
        files = generate_sample_data(folder, SampleDataConfig())
        texts = [json.loads(line)["text"] for line in files.corpus.read_text(encoding="utf-8").splitlines()]
    return texts[:count]


def in_process(model: str, texts: list[str], precision: str, repeats: int) -> tuple[dict, np.ndarray, list[str]]:
    """The peer: the same encoder over all texts at once; also the texts as a client sends them."""
    encoder = TextEncoder(resolve_model(model), EncodeConfig(precision=precision, show_progress=False))
    encoder.encode_passages(texts[:64])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = encoder.encode_passages(texts)
        times.append(time.perf_counter() - started)
    best = min(times)
    sent = [encoder.profile.format_passage(text) for text in texts]
    return {"seconds": round(best, 3), "texts_per_s": round(len(texts) / best, 1), "dtype": str(encoder.dtype),
            "repeats": repeats}, vectors, sent


def drive(base_url: str, name: str, texts: list[str], expected: np.ndarray, clients: int, per_request: int,
          requests_per_client: int) -> dict:
    """``clients`` threads, each sending ``requests_per_client`` requests of ``per_request`` texts.

    ``texts`` already carry the passage instruction (the client adds it, as for SGLang), so
    any OpenAI-compatible engine is driven the same way.
    """
    import openai

    latencies: list[float] = []
    errors: list[str] = []
    worst_cosine = [1.0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_loop(index: int) -> None:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="benchmark", max_retries=0, timeout=600)
        barrier.wait()
        for request in range(requests_per_client):
            start = ((index * requests_per_client + request) * per_request) % len(texts)
            chosen = [(start + i) % len(texts) for i in range(per_request)]
            sent = time.perf_counter()
            try:
                response = client.embeddings.create(model=name, input=[texts[i] for i in chosen])
            except Exception as error:  # counted, reported
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - sent
            got = np.array([item.embedding for item in response.data], dtype=np.float32)
            cosine = float(np.min(np.sum(got * expected[chosen], axis=1) /
                                  (np.linalg.norm(got, axis=1) * np.linalg.norm(expected[chosen], axis=1))))
            with lock:
                latencies.append(elapsed)
                worst_cosine[0] = min(worst_cosine[0], cosine)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = len(latencies)
    latencies_ms = sorted(1000 * s for s in latencies)
    return {"clients": clients, "texts_per_request": per_request, "requests": done, "errors": len(errors),
            "error_examples": errors[:3], "seconds": round(wall, 3),
            "texts_per_s": round(done * per_request / wall, 1), "requests_per_s": round(done / wall, 2),
            "p50_ms": round(statistics.median(latencies_ms), 1) if latencies_ms else None,
            "p99_ms": round(latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))], 1)
            if latencies_ms else None,
            "min_cosine_vs_in_process": round(worst_cosine[0], 6)}


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    peer = report["in_process"]["texts_per_s"]
    table = Table(title=f"searchtune serve vs in-process ({report['model']}, {report['in_process']['dtype']}, "
                        f"in-process {peer:.0f} texts/s)")
    for column in ("engine", "texts/request", "clients", "texts/s", "in-process texts/s", "% of in-process",
                   "p50 ms", "p99 ms", "errors", "min cosine"):
        table.add_column(column, justify="right")
    for run in report["runs"]:
        table.add_row(run["engine"], str(run["texts_per_request"]), str(run["clients"]), f"{run['texts_per_s']:.1f}",
                      f"{run['in_process_texts_per_s']:.1f}",
                      f"{100 * run['fraction_of_in_process']:.0f}%", str(run["p50_ms"]), str(run["p99_ms"]),
                      str(run["errors"]), f"{run['min_cosine_vs_in_process']:.6f}")
    Console().print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:multilingual-e5-small")
    parser.add_argument("--texts", type=int, default=1024, help="distinct passages sent")
    parser.add_argument("--texts-per-request", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--texts-per-client", type=int, default=256,
                        help="each client sends this many texts in total (bounded loop)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="in-process timing: best of")
    parser.add_argument("--output", type=Path, default=RESULTS / "serving.json")
    parser.add_argument("--external-endpoint", help="also drive another OpenAI-compatible server already running "
                                                    "on the same model (e.g. vLLM), the same way")
    parser.add_argument("--external-model", default="", help="its served model name")
    parser.add_argument("--external-name", default="external", help="its label in the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_before = os.getloadavg()
    texts = sample_texts(args.texts)
    peer, expected, sent = in_process(args.model, texts, args.precision, args.repeats)
    logger.info("in-process: %s", peer)

    def measure(engine: str, base_url: str, name: str) -> list[dict]:
        results = []
        for per_request in args.texts_per_request:
            drive(base_url, name, sent, expected, 1, per_request, 2)  # warm-up at this request size
            for clients in args.clients:
                # The peer again right before each run: on a shared machine the load moves.
                adjacent, _, _ = in_process(args.model, texts, args.precision, 1)
                run = drive(base_url, name, sent, expected, clients, per_request,
                            max(1, args.texts_per_client // per_request))
                run["engine"] = engine
                run["in_process_texts_per_s"] = adjacent["texts_per_s"]
                run["fraction_of_in_process"] = round(run["texts_per_s"] / adjacent["texts_per_s"], 3)
                logger.info("%s", run)
                results.append(run)
        return results

    runs = []
    with tempfile.TemporaryDirectory() as work:
        config = ServeConfig(model=args.model, served_model_name="bench", port=0, precision=args.precision)
        with ServerProcess(config, log_path=Path(work) / "server.log") as server:
            runs += measure("searchtune serve", server.base_url, "bench")
    if args.external_endpoint:
        runs += measure(args.external_name, args.external_endpoint.rstrip("/").removesuffix("/v1"),
                        args.external_model)
    at_16 = [run for run in runs if run["clients"] == 16 and run["engine"] == "searchtune serve"]
    # The machine is shared: the load around the run says how far the figures can be trusted.
    report = {"benchmark": "serving", "model": args.model, "machine": machine(), "texts": len(texts),
              "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
              "precision": args.precision, "in_process": peer, "runs": runs,
              "target": {"fraction_of_in_process_at_16_clients": TARGET_RATIO,
                         "met": {str(run["texts_per_request"]): run["fraction_of_in_process"] >= TARGET_RATIO
                                 for run in at_16}},
              "command": " ".join(["python", "benchmarks/serving.py"] + (argv if argv is not None else sys.argv[1:]))}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    render(report)
    print(f"written: {args.output}")
    return 0 if all(run["errors"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
