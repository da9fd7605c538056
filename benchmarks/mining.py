"""Benchmark: our mine step against sentence-transformers' ``mine_hard_negatives``.

Both mine ``--negatives`` random hard negatives per query for the first ``--queries`` training
queries of ``../shared/data/cmrc_drcd_zh`` (candidate pool: the corpus, optionally capped to
its first ``--passages`` passages plus every positive of the chosen queries), with the same
model (``builtin:multilingual-e5-small``, ``query: `` / ``passage: ``, mean pooling,
normalized), the same thread count, the same max length on both sides, the same batch size and
an exact inner-product FAISS search (``IndexFlatIP`` on CPU for both).

Every run is a fresh subprocess. Its wall time starts after the imports (torch,
transformers, sentence-transformers, faiss, datasets are imported before the clock starts, in
both) and covers reading the data, building the model and the whole mine call; "excl. load"
subtracts the model build (``TextEncoder.__init__`` for ours, ``SentenceTransformer(...)``
for sentence-transformers), measured the same way in both.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mining.py                      # full set, all cores
    .venv/bin/python benchmarks/mining.py --queries 200 --passages 2000 --peak-sizes 2048

See ``--help`` for every option and the README section "Benchmark: hard-negative mining" for
how each figure is defined.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("benchmarks.mining")

DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data" / "cmrc_drcd_zh"
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "mining.json"
DEFAULT_WORK = REPO_ROOT / "benchmarks" / "work" / "mining"  # ignored by git
ALL_RUNS = ("st-fp32", "ours-fp32", "ours-bf16", "st-bf16")
REFERENCE_RUN = "st-fp32"
TARGET_SPEEDUP = 1.5
TARGET_PEAK_FRACTION = 0.80


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(threads: int) -> dict:
    import torch

    model_name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model_name == "unknown":
                model_name = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu_model": model_name,
        "logical_cpus": os.cpu_count(),
        "cpus_available": cpu_threads(),
        "threads": threads,
        "flags": {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_mkldnn_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def dtype_name(dtype) -> str:
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def encoder_flops(batches: list[dict], shape: dict) -> tuple[float, float]:
    """(executed, useful) FLOPs of the encoder's matmuls over the recorded batches.

    Per layer and token, the linear layers cost ``2 * (4*H*H + 2*H*FF)`` FLOPs (Q, K, V and
    output projections, FFN up and down) and attention ``2 * 2 * L * H`` (Q·Kᵀ and P·V over
    L keys). Executed counts every padded position (what the CPU really computes, L = the
    batch's padded length); useful counts only real tokens (L = each text's own length).
    Embeddings, layer norms, softmax, GELU and the pooler are left out (< 1 %).
    """
    hidden, ffn, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    linear_per_token = 2 * (4 * hidden * hidden + 2 * hidden * ffn)
    executed = useful = 0.0
    for batch in batches:
        size, length = batch["batch"], batch["padded_len"]
        executed += size * length * linear_per_token + size * 4 * length * length * hidden
        useful += batch["real_tokens"] * linear_per_token + 4 * batch["real_len_sq"] * hidden
    return layers * executed, layers * useful


def exact_ranking(pool_vectors, query_vectors, k: int, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(pool_vectors.shape[1])
    index.add(pool_vectors)
    _, ids = index.search(query_vectors, min(k, len(pool_vectors)))
    return ids


def candidate_windows(ids, positives: list[list[int]], query_pool_ids: list[int], start: int, stop: int,
                      semantics: str) -> list[list[int]]:
    """Each query's candidate window, as pool ids, under one implementation's semantics.

    ``ours``: positions ``[start:stop]`` of the full ranking, then positives and the query's
    own text are dropped. ``st``: positives are removed from the ranking first, then positions
    ``[start:stop]`` of what is left are kept (sentence-transformers sets their scores to -inf
    and re-runs ``topk(range_max)``).
    """
    windows = []
    for row, pos, query_id in zip(ids, positives, query_pool_ids):
        pos_set = set(pos)
        ranked = [int(i) for i in row if i >= 0]
        if semantics == "ours":
            windows.append([i for i in ranked[start:stop] if i not in pos_set and i != query_id])
        else:
            windows.append([i for i in ranked if i not in pos_set][start:stop])
    return windows


def positive_positions(ids, positives: list[list[int]], start: int, stop: int) -> tuple[list[int], list[int]]:
    """Per query: how many positives rank in ``[0:start)`` and in ``[start:stop)``."""
    before, inside = [], []
    for row, pos in zip(ids, positives):
        ranked = [int(i) for i in row[:stop]]
        before.append(sum(i in pos for i in ranked[:start]))
        inside.append(sum(i in pos for i in ranked[start:stop]))
    return before, inside


class ForwardRecorder:
    """Hooks on the Hugging Face model's parts: batch shapes, real tokens, forward time.

    sentence-transformers calls ``model.forward(...)`` directly, which skips hooks on the
    top module, so both sides hook the embeddings (start: input ids) and the encoder (end).
    A real token is one whose id is not the pad id (special and prompt tokens included).
    """

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.forward_s = 0.0
        self._started = 0.0
        self._pad_id = 0

    def attach(self, model) -> None:
        self._pad_id = model.config.pad_token_id
        model.embeddings.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.encoder.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0]
        lengths = (ids != self._pad_id).sum(dim=1)
        self.batches.append({"batch": int(ids.shape[0]), "padded_len": int(ids.shape[1]),
                             "real_tokens": int(lengths.sum()), "real_len_sq": int((lengths * lengths).sum())})
        self._started = time.perf_counter()

    def _post(self, module, args, output):
        self.forward_s += time.perf_counter() - self._started


# --------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# --------------------------------------------------------------------------------------------

def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN/MKL kernel selection, weight packing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _worker_peak(spec: dict) -> dict:
    """Square-matmul peak per dtype, and the same dtype on the encoder's own linear shapes."""
    import torch
    import torch.nn.functional as F

    set_threads(spec["threads"])
    hidden, ffn, rows = spec["hidden_size"], spec["intermediate_size"], spec["linear_rows"]
    results = {}
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            per_size = {}
            for n in spec["peak_sizes"]:
                a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
                per_size[str(n)] = 2 * n ** 3 / _best_time(lambda: torch.matmul(a, b), spec["peak_repeats"])
                logger.info("peak %s matmul n=%d: %.1f GFLOP/s", name, n, per_size[str(n)] / 1e9)
            # One layer's linear work at the encoder's shapes: rows = batch x padded length.
            x = torch.randn(rows, hidden).to(dtype)
            h = torch.randn(rows, ffn).to(dtype)
            w_attn = [torch.randn(hidden, hidden).to(dtype) for _ in range(4)]
            w_up, w_down = torch.randn(ffn, hidden).to(dtype), torch.randn(hidden, ffn).to(dtype)

            def layer():
                for w in w_attn:
                    F.linear(x, w)
                F.linear(x, w_up)
                F.linear(h, w_down)

            linear = 2 * rows * (4 * hidden * hidden + 2 * hidden * ffn) / _best_time(layer, spec["peak_repeats"])
            logger.info("%s linear layers at %d x %d (FF %d): %.1f GFLOP/s", name, rows, hidden, ffn, linear / 1e9)
            results[name] = {"flops_per_s": max(per_size.values()), "by_size": per_size,
                             "encoder_linear_flops_per_s": linear}
    return results


def _load_subset(spec: dict) -> tuple[list[dict], list[str]]:
    rows = [json.loads(line) for line in Path(spec["train_path"]).read_text(encoding="utf-8").splitlines()]
    pool = [json.loads(line)["text"] for line in Path(spec["corpus_path"]).read_text(encoding="utf-8").splitlines()]
    return rows, pool


def _worker_ours(spec: dict) -> dict:
    import numpy as np
    import transformers  # noqa: F401  (imported before the clock, as in the ST worker)
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    import components.mine as mine
    from components.embedding import EncodeConfig, TextEncoder

    set_threads(spec["threads"])
    recorder = ForwardRecorder()
    timings = {"load_s": 0.0, "encode_s": 0.0, "encode_texts": 0}
    captured: dict[str, np.ndarray] = {}

    class InstrumentedEncoder(TextEncoder):
        def __init__(self, *args, **kwargs):
            started = time.perf_counter()
            super().__init__(*args, **kwargs)
            timings["load_s"] += time.perf_counter() - started
            timings["dtype"] = dtype_name(self.dtype)
            recorder.attach(self.model)

        def encode_queries(self, texts, description="encode queries", instructions=None):
            started = time.perf_counter()
            captured["queries"] = super().encode_queries(texts, description, instructions)
            timings["encode_s"] += time.perf_counter() - started
            timings["encode_texts"] += len(texts)
            return captured["queries"]

        def encode_passages(self, texts, description="encode passages"):
            started = time.perf_counter()
            captured["pool"] = super().encode_passages(texts, description)
            timings["encode_s"] += time.perf_counter() - started
            timings["encode_texts"] += len(texts)
            return captured["pool"]

    mine.TextEncoder = InstrumentedEncoder
    start, stop = spec["range"]
    config = mine.MineConfig(
        model=spec["model"], range_for_sampling=(start, stop), negative_number=spec["negatives"],
        seed=spec["seed"], query_max_len=spec["max_len"], passage_max_len=spec["max_len"],
        use_gpu_index=False,
        encode=EncodeConfig(batch_size=spec["batch_size"], precision=spec["precision"], device="cpu"),
    )
    out_dir = Path(spec["out_dir"])
    started = time.perf_counter()
    result = mine.mine_hard_negatives(spec["train_path"], out_dir, config, corpus_path=spec["corpus_path"])
    wall = time.perf_counter() - started

    rows, pool = _load_subset(spec)
    index = {text: i for i, text in enumerate(pool)}
    mined = [json.loads(line) for line in result.train.read_text(encoding="utf-8").splitlines()]
    negatives = {row["query"]: [index[t] for t in row["neg"]] for row in mined}
    return {"wall_s": wall, "timings": timings, "recorder": recorder, "captured": captured,
            "negatives": negatives, "semantics": "ours", "dtype": timings["dtype"]}


def _worker_st(spec: dict) -> dict:
    import datasets  # noqa: F401  (ST imports it inside mine_hard_negatives)
    import faiss  # noqa: F401
    import numpy as np
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    set_threads(spec["threads"])
    recorder = ForwardRecorder()
    timings = {"encode_s": 0.0, "encode_texts": 0}
    captured: dict[str, np.ndarray] = {}
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32

    started = time.perf_counter()
    model = SentenceTransformer(spec["model_path"], device="cpu", model_kwargs={"dtype": dtype})
    model.max_seq_length = spec["max_len"]
    timings["load_s"] = time.perf_counter() - started
    hf_model = model[0].auto_model
    if next(hf_model.parameters()).dtype != dtype:
        raise RuntimeError(f"sentence-transformers model is in {next(hf_model.parameters()).dtype}, not {dtype}")
    recorder.attach(hf_model)

    plain_encode = model.encode

    def timed_encode(*args, **kwargs):
        begun = time.perf_counter()
        out = plain_encode(*args, **kwargs)
        timings["encode_s"] += time.perf_counter() - begun
        inputs = kwargs.get("inputs", args[0] if args else None)
        timings["encode_texts"] += len(inputs)
        captured["queries" if kwargs.get("task") == "query" else "pool"] = out
        return out

    model.encode = timed_encode  # encode_query / encode_document call self.encode

    rows, pool = _load_subset(spec)
    dataset = Dataset.from_dict({"query": [r["query"] for r in rows for _ in r["pos"]],
                                 "pos": [p for r in rows for p in r["pos"]]})
    random.seed(spec["seed"])  # ST samples with the global `random` module
    start, stop = spec["st_range"]
    mined = st_mine(
        dataset, model, anchor_column_name="query", positive_column_name="pos", corpus=pool,
        range_min=start, range_max=stop, num_negatives=spec["negatives"], sampling_strategy="random",
        query_prompt=spec["query_prompt"], corpus_prompt=spec["passage_prompt"],
        output_format="n-tuple", batch_size=spec["batch_size"], use_faiss=True, verbose=False,
    )
    wall = time.perf_counter() - started

    index = {text: i for i, text in enumerate(pool)}
    columns = [f"negative_{i}" for i in range(1, spec["negatives"] + 1)]
    negatives = {}
    for row in mined:
        negatives.setdefault(row["query"], [index[row[c]] for c in columns])
    return {"wall_s": wall, "timings": timings, "recorder": recorder, "captured": captured,
            "negatives": negatives, "semantics": "st", "dtype": dtype_name(dtype)}


def run_worker(spec_path: str) -> None:
    import numpy as np

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if spec["kind"] == "peak":
        result = _worker_peak(spec)
        Path(spec["result_path"]).write_text(json.dumps(result), encoding="utf-8")
        return

    outcome = _worker_ours(spec) if spec["kind"] == "ours" else _worker_st(spec)
    # Everything below is outside the timed section.
    rows, pool = _load_subset(spec)
    index = {text: i for i, text in enumerate(pool)}
    positives = [[index[p] for p in row["pos"]] for row in rows]
    query_ids = [index.get(row["query"], -1) for row in rows]
    captured = outcome["captured"]
    start, stop = spec["range"] if outcome["semantics"] == "ours" else spec["st_range"]
    max_pos = max(len(p) for p in positives)
    ids = exact_ranking(np.ascontiguousarray(captured["pool"], dtype=np.float32),
                        np.ascontiguousarray(captured["queries"], dtype=np.float32),
                        max(stop, spec["range"][1]) + max_pos, spec["threads"])
    windows = candidate_windows(ids, positives, query_ids, start, stop, outcome["semantics"])
    # Against ours' (a, b) whatever the run: decides when the two windows are the same.
    before, inside = positive_positions(ids, positives, *spec["range"])

    width = max(len(w) for w in windows)
    window_array = np.full((len(rows), width), -1, dtype=np.int64)
    for i, w in enumerate(windows):
        window_array[i, :len(w)] = w
    neg_array = np.full((len(rows), spec["negatives"]), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        chosen = outcome["negatives"].get(row["query"], [])
        neg_array[i, :len(chosen)] = chosen
    np.savez_compressed(spec["arrays_path"], negatives=neg_array, windows=window_array,
                        positives_before=np.array(before), positives_inside=np.array(inside))

    recorder: ForwardRecorder = outcome["recorder"]
    timings = outcome["timings"]
    Path(spec["result_path"]).write_text(json.dumps({
        "run": spec["run"], "dtype": outcome["dtype"], "wall_s": outcome["wall_s"],
        "load_s": timings["load_s"], "encode_s": timings["encode_s"], "forward_s": recorder.forward_s,
        "encode_texts": timings["encode_texts"], "batches": recorder.batches,
        "queries_with_negatives": sum(1 for row in rows if row["query"] in outcome["negatives"]),
    }), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Parent: data subset, runs, figures, table, JSON
# --------------------------------------------------------------------------------------------

def prepare_subset(data_dir: Path, queries: int, passages: int, work: Path) -> dict:
    train = [json.loads(line) for line in (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    corpus = [json.loads(line) for line in (data_dir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = train[:queries] if queries else train
    kept = corpus[:passages] if passages else corpus
    wanted = {p for row in rows for p in row["pos"]}
    have = {entry["text"] for entry in kept}
    # All positives of the chosen queries, in corpus order, after the first M passages.
    extra = [entry for entry in corpus[len(kept):] if entry["text"] in wanted and entry["text"] not in have]
    pool = list({entry["text"]: entry for entry in kept + extra}.values())
    missing = wanted - {entry["text"] for entry in pool}
    if missing:
        raise ValueError(f"{len(missing)} positives are not in {data_dir / 'corpus.jsonl'}")
    work.mkdir(parents=True, exist_ok=True)
    train_path, corpus_path = work / "train.jsonl", work / "corpus.jsonl"
    train_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    corpus_path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in pool), encoding="utf-8")
    return {"train_path": str(train_path), "corpus_path": str(corpus_path), "queries": len(rows),
            "pool_passages": len(pool), "positives": sum(len(r["pos"]) for r in rows),
            "positives_added_beyond_cap": len(extra)}


def spawn(spec: dict, work: Path, threads: int, timeout: float | None) -> dict:
    spec_path = work / f"{spec['run']}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads), PYTHONPATH=str(REPO_ROOT))
    log_path = work / "logs" / f"{spec['run']}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                   timeout=timeout, check=False)
    if completed.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"worker {spec['run']} failed (exit {completed.returncode}); log {log_path}:\n{tail}")
    return json.loads(Path(spec["result_path"]).read_text(encoding="utf-8"))


def summarize_run(result: dict, shape: dict, peak: dict) -> dict:
    batches = result["batches"]
    executed, useful = encoder_flops(batches, shape)
    real = sum(b["real_tokens"] for b in batches)
    padded = sum(b["batch"] * b["padded_len"] for b in batches)
    encode_s, forward_s = result["encode_s"], result["forward_s"]
    peak_flops = peak[result["dtype"]]["flops_per_s"]
    return {
        "dtype": result["dtype"],
        "wall_s": result["wall_s"],
        "load_s": result["load_s"],
        "wall_excl_load_s": result["wall_s"] - result["load_s"],
        "encode_s": encode_s,
        "forward_s": forward_s,
        "rest_s": result["wall_s"] - result["load_s"] - encode_s,
        "texts_encoded": result["encode_texts"],
        "forward_batches": len(batches),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_overhead": padded / real if real else None,
        "texts_per_s": result["encode_texts"] / encode_s,
        "real_tokens_per_s": real / encode_s,
        "executed_flops": executed,
        "useful_flops": useful,
        "encode_flops_per_s": executed / encode_s,
        "forward_flops_per_s": executed / forward_s,
        "encode_fraction_of_peak": executed / encode_s / peak_flops,
        "encode_fraction_of_linear_ceiling": executed / encode_s / peak[result["dtype"]]["encoder_linear_flops_per_s"],
        "forward_fraction_of_peak": executed / forward_s / peak_flops,
        "useful_fraction_of_peak": useful / encode_s / peak_flops,
        "queries_with_negatives": result["queries_with_negatives"],
    }


def overlap(arrays: dict, reference: dict, negatives: int) -> dict:
    import numpy as np

    jaccards, inside, window_jaccards, chance = [], [], [], []
    for ours_neg, ref_neg, ours_win, ref_win in zip(arrays["negatives"], reference["negatives"],
                                                    arrays["windows"], reference["windows"]):
        a, b = {int(i) for i in ours_neg if i >= 0}, {int(i) for i in ref_neg if i >= 0}
        wa, wb = {int(i) for i in ours_win if i >= 0}, {int(i) for i in ref_win if i >= 0}
        if not a or not b:
            continue
        jaccards.append(len(a & b) / len(a | b))
        inside.extend(i in wb for i in a)
        window_jaccards.append(len(wa & wb) / len(wa | wb))
        # Two independent draws of k from the same n candidates: E|A∩B| = k²/n.
        n = max(len(wb), negatives)
        common = negatives * negatives / n
        chance.append(common / (2 * negatives - common))
    return {"negatives_jaccard_mean": float(np.mean(jaccards)),
            "share_inside_reference_window": float(np.mean(inside)),
            "window_jaccard_mean": float(np.mean(window_jaccards)),
            "negatives_jaccard_if_independent_draws": float(np.mean(chance)),
            "queries_compared": len(jaccards)}


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    runs, settings, peak = report["runs"], report["settings"], report["peak"]
    table = Table(title=f"Hard-negative mining: {settings['queries']} queries, {settings['pool_passages']} passages, "
                        f"max_len {settings['max_len_query_and_passage']}, batch {settings['batch_size']}, "
                        f"{report['machine']['threads']} threads, {report['machine']['cpu_model']}")
    columns = ("run", "dtype", "wall s", "excl. load s", "encode s", "texts/s", "tokens/s", "pad x",
               "GFLOP/s", "% peak", "% lin. ceil.", "ST/ours", "neg Jaccard", "in ST win", "win Jaccard")
    for name in columns:
        table.add_column(name, justify="left" if name in ("run", "dtype") else "right", no_wrap=True)
    for name, run in runs.items():
        speed = report["speedups"].get(name)
        ov = run.get("overlap_vs_reference") or {}
        table.add_row(
            name, run["dtype"], f"{run['wall_s']:.1f}", f"{run['wall_excl_load_s']:.1f}", f"{run['encode_s']:.1f}",
            f"{run['texts_per_s']:.0f}", f"{run['real_tokens_per_s']:.0f}", f"{run['padding_overhead']:.2f}",
            f"{run['encode_flops_per_s'] / 1e9:.0f}", f"{100 * run['encode_fraction_of_peak']:.1f}%",
            f"{100 * run['encode_fraction_of_linear_ceiling']:.1f}%",
            f"{speed['wall_ratio']:.2f}" if speed else "",
            f"{ov['negatives_jaccard_mean']:.3f}" if ov else "ref",
            f"{100 * ov['share_inside_reference_window']:.1f}%" if ov else "ref",
            f"{ov['window_jaccard_mean']:.3f}" if ov else "ref",
        )
    console.print(table)
    console.print(
        f"matmul peak (best of n={settings['peak_sizes']}): fp32 {peak['fp32']['flops_per_s'] / 1e9:.0f}, "
        f"bf16 {peak['bf16']['flops_per_s'] / 1e9:.0f} GFLOP/s; encoder-shaped linear layers "
        f"({settings['linear_rows']} rows): fp32 {peak['fp32']['encoder_linear_flops_per_s'] / 1e9:.0f}, "
        f"bf16 {peak['bf16']['encoder_linear_flops_per_s'] / 1e9:.0f} GFLOP/s")
    ranks = next(iter(runs.values()))["positive_ranks"]
    console.print(
        f"candidate windows: ours [{settings['ours_range_for_sampling'][0]}:{settings['ours_range_for_sampling'][1]}] "
        f"of the full ranking minus positives; ST range_min/max {settings['st_range_min_max']} over the ranking "
        f"without positives. Identical for {100 * ranks['queries_no_positive_in_top_b']:.0f}% of queries with "
        f"--st-range same, {100 * ranks['queries_one_positive_above_a_none_inside']:.0f}% with --st-range shifted. "
        f"Random draws from one window would give neg Jaccard "
        f"~{(next((r['overlap_vs_reference'] for r in runs.values() if r.get('overlap_vs_reference')), None) or {}).get('negatives_jaccard_if_independent_draws', float('nan')):.3f}.")
    targets = Table(title="Targets")
    for name in ("target", "comparison", "value", "met"):
        targets.add_column(name, no_wrap=True)
    for target in report["targets"]:
        targets.add_row(target["target"], target["comparison"], target["value"],
                        "[green]met[/]" if target["met"] else "[red]missed[/]")
    console.print(targets)


def build_targets(report: dict) -> list[dict]:
    out = []
    for name, speed in report["speedups"].items():
        out.append({"target": f"ST/ours wall ≥ {TARGET_SPEEDUP}", "comparison": f"{speed['st_run']} / {name}",
                    "value": f"{speed['wall_ratio']:.2f}× ({speed['wall_excl_load_ratio']:.2f}× excl. load)",
                    "met": speed["wall_ratio"] >= TARGET_SPEEDUP})
    for name, run in report["runs"].items():
        if name.startswith("ours"):
            out.append({"target": f"encode ≥ {TARGET_PEAK_FRACTION:.0%} of {run['dtype']} peak", "comparison": name,
                        "value": f"{run['encode_fraction_of_peak']:.1%} (forward only "
                                 f"{run['forward_fraction_of_peak']:.1%}; {run['encode_fraction_of_linear_ceiling']:.0%} "
                                 f"of the encoder-shaped ceiling)",
                        "met": run["encode_fraction_of_peak"] >= TARGET_PEAK_FRACTION})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and corpus.jsonl")
    parser.add_argument("--queries", type=int, default=0, help="first N training queries (0: all)")
    parser.add_argument("--passages", type=int, default=0,
                        help="cap the pool to the first M corpus passages, plus all positives of the queries (0: all)")
    parser.add_argument("--model", default="builtin:multilingual-e5-small")
    parser.add_argument("--threads", type=int, default=cpu_threads(), help="torch and FAISS threads, both sides")
    parser.add_argument("--max-len", type=int, default=128,
                        help="max tokens, queries and passages alike (ST has one max_seq_length)")
    parser.add_argument("--range", default="2-200", help="ours' range_for_sampling a-b: slice [a:b] of the ranking")
    parser.add_argument("--st-range", choices=("same", "shifted"), default="same",
                        help="ST range_min/range_max: 'same' = a/b; 'shifted' = a-1/b-1 (equal windows when exactly "
                             "one positive ranks above a and none inside; see README)")
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="encode batch size, both sides")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", default=",".join(ALL_RUNS), help=f"comma list out of {', '.join(ALL_RUNS)}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh-process repeats per run (interleaved); the median by wall time is reported")
    parser.add_argument("--peak-sizes", default="2048,4096", help="square matmul sizes for the peak")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--linear-rows", type=int, default=4096,
                        help="rows (batch x padded length) of the encoder-shaped linear-layer ceiling")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--keep-work", action="store_true", help="keep mined outputs and logs under --work-dir")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per worker process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = set(runs) - set(ALL_RUNS)
    if unknown:
        parser.error(f"unknown runs: {', '.join(sorted(unknown))}")
    args.run_list = runs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_worker(args.worker)
        return 0

    import numpy as np
    import torch
    from rich.logging import RichHandler
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from components.embedding import cpu_has_native_bf16, pick_dtype
    from components.jsonl_files import write_json
    from components.mine import parse_range
    from components.model_profiles import resolve_model

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    start, stop = parse_range(args.range)
    st_range = (start, stop) if args.st_range == "same" else (max(start - 1, 0), stop - 1)

    model = resolve_model(args.model)  # materializes a builtin once, before any timed run
    profile = model.profile
    shape = {k: json.loads((Path(model.path) / "config.json").read_text())[k]
             for k in ("hidden_size", "intermediate_size", "num_hidden_layers")}
    machine = machine_info(args.threads)
    logger.info("machine: %s, %d threads, avx512_bf16=%s amx_bf16=%s", machine["cpu_model"], args.threads,
                machine["flags"]["avx512_bf16"], machine["flags"]["amx_bf16"])
    load = machine["load_average_at_start"]
    if load and load[0] > 0.25 * (machine["logical_cpus"] or 1):
        logger.warning("1-minute load average is %.2f before the benchmark starts: other work shares these CPUs, "
                       "and with every core in use the OpenMP threads wait on each other, which can slow each "
                       "op several-fold; run on a quiet machine for figures to publish", load[0])
    if not cpu_has_native_bf16() and any(r.endswith("bf16") for r in args.run_list):
        logger.warning("this CPU has no native bf16: the bf16 rows measure emulated bf16")

    work = Path(tempfile.mkdtemp(prefix="run-", dir=_mkdir(args.work_dir)))
    subset = prepare_subset(args.data_dir, args.queries, args.passages, work)
    logger.info("subset: %d queries, %d pool passages (%d positives added beyond the cap); work dir %s",
                subset["queries"], subset["pool_passages"], subset["positives_added_beyond_cap"], work)

    base = {"threads": args.threads, "model": args.model, "model_path": model.path, "max_len": args.max_len,
            "range": [start, stop], "st_range": list(st_range), "negatives": args.negatives,
            "batch_size": args.batch_size, "seed": args.seed, "query_prompt": profile.format_query(""),
            "passage_prompt": profile.format_passage(""), **subset}
    peak_sizes = [int(s) for s in args.peak_sizes.split(",") if s.strip()]
    jobs = [("peak", {"kind": "peak", "run": "peak", "threads": args.threads, "peak_sizes": peak_sizes,
                      "peak_repeats": args.peak_repeats, "linear_rows": args.linear_rows, **shape,
                      "result_path": str(work / "peak.result.json")})]
    for repeat in range(args.repeats):
        for run in args.run_list:
            kind, precision = run.split("-")
            tag = f"{run}.{repeat}"
            jobs.append((run, {**base, "kind": kind, "precision": precision, "run": tag,
                               "out_dir": str(work / tag / "mined"), "result_path": str(work / f"{tag}.result.json"),
                               "arrays_path": str(work / f"{tag}.arrays.npz")}))

    results: dict[str, list[dict]] = {}
    peak = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("benchmark", total=len(jobs))
        for run, spec in jobs:
            progress.update(task, description=f"running {spec['run']}")
            began = time.perf_counter()
            result = spawn(spec, work, args.threads, args.timeout)
            logger.info("%s done in %.1f s (process)", spec["run"], time.perf_counter() - began)
            if run == "peak":
                peak = result
            else:
                result["arrays_path"] = spec["arrays_path"]
                results.setdefault(run, []).append(result)
            progress.advance(task)

    report_runs, arrays = {}, {}
    for run in args.run_list:
        repeats = sorted(results[run], key=lambda r: r["wall_s"])
        chosen = repeats[len(repeats) // 2] if len(repeats) % 2 else repeats[len(repeats) // 2 - 1]
        summary = summarize_run(chosen, shape, peak)
        summary["repeats_wall_s"] = [r["wall_s"] for r in results[run]]
        summary["repeats_wall_excl_load_s"] = [r["wall_s"] - r["load_s"] for r in results[run]]
        with np.load(chosen["arrays_path"]) as data:
            arrays[run] = {k: data[k] for k in data.files}
        before, inside = arrays[run]["positives_before"], arrays[run]["positives_inside"]
        summary["positive_ranks"] = {
            "queries_no_positive_in_top_b": float(np.mean((before == 0) & (inside == 0))),
            "queries_one_positive_above_a_none_inside": float(np.mean((before == 1) & (inside == 0))),
            "queries_positive_inside_window": float(np.mean(inside > 0)),
        }
        report_runs[run] = summary

    reference = REFERENCE_RUN if REFERENCE_RUN in arrays else next((r for r in arrays if r.startswith("st")), None)
    for run in report_runs:
        report_runs[run]["overlap_vs_reference"] = (
            overlap(arrays[run], arrays[reference], args.negatives)
            if reference and run != reference else None)

    speedups = {}
    for run in report_runs:
        if not run.startswith("ours"):
            continue
        st_run = "st-" + run.split("-")[1]
        if st_run in report_runs:
            speedups[run] = _ratio(report_runs[st_run], report_runs[run], st_run)
    default_ours = "ours-" + dtype_name(pick_dtype("auto", torch.device("cpu")))
    if default_ours in report_runs and "st-fp32" in report_runs:
        speedups[f"{default_ours} (defaults)"] = _ratio(report_runs["st-fp32"], report_runs[default_ours], "st-fp32")
        speedups[f"{default_ours} (defaults)"]["ours_run"] = default_ours

    report = {
        "benchmark": "hard-negative mining: components.mine vs sentence_transformers.util.mine_hard_negatives",
        "machine": machine,
        "settings": {
            "data_dir": os.path.relpath(args.data_dir.resolve(), REPO_ROOT), "queries": subset["queries"],
            "passages_cap": args.passages or None, "pool_passages": subset["pool_passages"],
            "positives": subset["positives"], "positives_added_beyond_cap": subset["positives_added_beyond_cap"],
            "model": args.model, "model_shape": shape, "max_len_query_and_passage": args.max_len,
            "ours_range_for_sampling": [start, stop], "st_range_min_max": list(st_range), "st_range_mode": args.st_range,
            "negatives": args.negatives, "sampling": "random (ours: per-query seeded numpy; ST: global random.seed)",
            "search": "exact: faiss.IndexFlatIP on CPU, both", "batch_size": args.batch_size, "seed": args.seed,
            "st_output_format": "n-tuple", "st_verbose": False, "repeats": args.repeats,
            "peak_sizes": peak_sizes, "peak_repeats": args.peak_repeats, "linear_rows": args.linear_rows,
            "timing": "fresh subprocess per run; clock starts after imports; wall includes reading data, model "
                      "build and the whole mine call; excl. load subtracts the model build",
            "ours_default_precision_resolves_to": default_ours.split("-")[1],
            "reference_run_for_overlap": reference,
        },
        "peak": peak,
        "flops_formula": "per layer and token: 2*(4*H*H + 2*H*FF) linear + 2*2*L*H attention; executed uses the "
                         "padded length L of each batch over padded tokens, useful each text's own length over "
                         "real tokens; x num_hidden_layers; embeddings/layernorm/softmax/GELU/pooler ignored",
        "runs": report_runs,
        "speedups": speedups,
    }
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["targets"] = build_targets(report)
    write_json(args.output, report)  # temp file + rename
    logger.info("wrote %s", args.output)
    render(report)
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


def _ratio(st: dict, ours: dict, st_run: str) -> dict:
    return {"st_run": st_run, "wall_ratio": st["wall_s"] / ours["wall_s"],
            "wall_excl_load_ratio": st["wall_excl_load_s"] / ours["wall_excl_load_s"],
            "encode_ratio": st["encode_s"] / ours["encode_s"]}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
