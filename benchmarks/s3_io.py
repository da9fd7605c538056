"""Benchmark: moving a model folder through our storage layer vs plain boto3.

A model folder (``--size-mb`` of weights in ``model.safetensors`` plus the small
tokenizer and config files a model carries) goes up to and comes back from a local
SeaweedFS S3 server (``tests/s3_server.py``, the one the test suite uses), two ways:

* **ours**: ``components.object_store.upload_folder`` / ``download_folder``: the folder
  sealed with its completion marker (SHA-256 of every file), checksums verified on the way
  down, the download renamed into place only when whole;
* **plain boto3**: ``client.upload_file`` / ``download_file`` per file with boto3's default
  transfer settings, no marker and no check: the peer, measured in the same run.

Each transfer runs in a fresh subprocess (so its peak resident memory is its own), the two
ways alternate, and the median of ``--repeats`` is reported. Peak memory is the transfer
process's own high-water mark (``VmHWM``), imports included (``baseline_rss_mb`` is the
mark before the transfer call). Throughput = folder bytes /
wall seconds of the transfer call; the ratio is ours / plain (target: at least 0.9).

Usage (from the repository root)::

    .venv/bin/python benchmarks/s3_io.py                 # 500 MB, 3 repeats
    .venv/bin/python benchmarks/s3_io.py --size-mb 100 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "s3_io.json"
TARGET_RATIO = 0.9
BUCKET = "bench"

# One transfer, in its own process: imports first (not timed), then the call, then the peak RSS.
_TRANSFER = r"""
import json, sys, time
from pathlib import Path
import boto3
way, direction, local, prefix, bucket = sys.argv[1:6]
client = boto3.session.Session().client("s3")
if way.startswith("ours"):
    from components import object_store
    object_store.s3_client()  # made once per process and reused, as the plain way's client is

def high_water_mb():
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's over fork and exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

baseline = high_water_mb()
started = time.perf_counter()
if way == "ours" and direction == "upload":
    object_store.upload_folder(local, f"s3://{bucket}/{prefix}")
elif way == "ours":
    object_store.download_folder(f"s3://{bucket}/{prefix}", local)
elif way == "ours-unverified":
    object_store.download_folder(f"s3://{bucket}/{prefix}", local,
                                 object_store.StorageSettings(verify_checksums=False))
elif direction == "upload":
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
else:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    for item in listing.get("Contents", []):
        target = Path(local) / item["Key"][len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, item["Key"], str(target))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_mb": high_water_mb(), "baseline_rss_mb": baseline}))
"""


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    import boto3
    import psutil

    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "sha_ni": "sha_ni" in cpuinfo, "python": platform.python_version(), "boto3": boto3.__version__,
            "platform": platform.platform(), "load_average_at_start": os.getloadavg()}


def make_model_folder(folder: Path, size_mb: int) -> int:
    """Weights plus the files a transformers model folder carries; returns the total bytes."""
    folder.mkdir(parents=True)
    with (folder / "model.safetensors").open("wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1 << 20))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 1024, "num_hidden_layers": 24}), encoding="utf-8")
    (folder / "tokenizer.json").write_bytes(os.urandom(700_000))
    (folder / "vocab.txt").write_bytes(os.urandom(110_000))
    for name in ("tokenizer_config.json", "special_tokens_map.json", "modules.json", "searchtune_profile.json"):
        (folder / name).write_text("{}", encoding="utf-8")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{}", encoding="utf-8")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def transfer(way: str, direction: str, local: Path, prefix: str, environment: dict) -> dict:
    env = {**os.environ, **environment, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", _TRANSFER, way, direction, str(local), prefix, BUCKET],
                            env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{way} {direction} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500, help="size of model.safetensors")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from components.object_store import DEFAULT_SETTINGS
    from tests.s3_server import SeaweedServer

    scratch = Path(tempfile.mkdtemp(prefix="s3-io-", dir=args.work))
    server = SeaweedServer(scratch / "weed", buckets=(BUCKET,)).start()
    try:
        source = scratch / "model"
        total = make_model_folder(source, args.size_mb)
        # Warm the page cache for both ways alike.
        for path in source.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    while handle.read(8 << 20):
                        pass
        samples: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            order = ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours")
            for way in order:
                prefix = f"{way}-{repeat}"
                up = transfer(way, "upload", source, prefix, server.environment)
                target = scratch / f"down-{prefix}"
                down = transfer(way, "download", target, prefix, server.environment)
                shutil.rmtree(target)
                measured = [("upload", up), ("download", down)]
                if way == "ours":
                    # The same transfer without the SHA-256 check: what the integrity check costs.
                    unverified = transfer("ours-unverified", "download", target, prefix, server.environment)
                    shutil.rmtree(target)
                    measured.append(("download_unverified", unverified))
                for direction, sample in measured:
                    samples.setdefault(f"{way}_{direction}", []).append(sample)
                    print(f"repeat {repeat + 1}: {way:5s} {direction:8s} {total / 1e6 / sample['seconds']:7.1f} MB/s"
                          f"  peak {sample['peak_rss_mb']:6.0f} MB", flush=True)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    results: dict = {}
    for key, runs in samples.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        results[key] = {"seconds_median": round(seconds, 3), "mb_per_s": round(total / 1e6 / seconds, 1),
                        "seconds_all": [round(r["seconds"], 3) for r in runs],
                        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                        "baseline_rss_mb": round(statistics.median(r["baseline_rss_mb"] for r in runs), 1)}
    ratios = {direction: round(results[f"ours_{direction}"]["mb_per_s"] / results[f"plain_{direction}"]["mb_per_s"], 3)
              for direction in ("upload", "download")}
    ratios["download_unverified"] = round(results["ours_download_unverified"]["mb_per_s"]
                                          / results["plain_download"]["mb_per_s"], 3)
    report = {
        "benchmark": "s3_io",
        "folder_bytes": total,
        "repeats": args.repeats,
        "store": "SeaweedFS (weed mini) on 127.0.0.1",
        "settings": {k: getattr(DEFAULT_SETTINGS, k) for k in DEFAULT_SETTINGS.__dataclass_fields__},
        "results": results,
        "throughput_ratio_ours_over_plain": ratios,
        "target_ratio": TARGET_RATIO,
        "targets_met": {direction: ratios[direction] >= TARGET_RATIO for direction in ("upload", "download")},
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(f"\nfolder: {total / 1e6:.0f} MB; median of {args.repeats}")
    print("| transfer | ours MB/s | plain boto3 MB/s | ratio | ours peak RSS MB | plain peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for direction in ("upload", "download"):
        ours, plain = results[f"ours_{direction}"], results[f"plain_{direction}"]
        print(f"| {direction} | {ours['mb_per_s']} | {plain['mb_per_s']} | {ratios[direction]} | "
              f"{ours['peak_rss_mb']} | {plain['peak_rss_mb']} |")
    unverified = results["ours_download_unverified"]
    print(f"| download, checksums not verified | {unverified['mb_per_s']} | {results['plain_download']['mb_per_s']} | "
          f"{ratios['download_unverified']} | {unverified['peak_rss_mb']} | |")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
