"""What a training replica learns from its pod: the job's topology and its CPU budget.

Kubeflow's two operators tell a replica different things:

- the Training Operator (``kubeflow.org/v1`` PyTorchJob) sets ``MASTER_ADDR``,
  ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK`` and, since v1.7, ``PET_NNODES``,
  ``PET_NODE_RANK`` and ``PET_NPROC_PER_NODE``, but never ``PET_MASTER_*``;
- Kubeflow Trainer v2 (TrainJob, ``torch-distributed`` runtime) sets only ``PET_NNODES``,
  ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``.

:class:`ReplicaTopology` reads either set (or the older operator's ``MASTER_*`` with
``WORLD_SIZE`` counting pods) and gives torchrun explicit arguments, so the world size
always comes from the job, never from a config default.

A pod's CPU limit is a cgroup quota that ``os.cpu_count()`` does not see: a 16-CPU pod on
a 128-core node would start 128 threads per process. :func:`cpu_limit` reads the quota
(cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) and :func:`thread_environment` sizes
OpenMP, MKL and the tokenizers' Rayon pool per process from it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The variables a job's operator injects; any of them means "inside a training job".
OPERATOR_VARIABLES = ("PET_NNODES", "PET_MASTER_ADDR", "MASTER_ADDR")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


class TopologyError(ValueError):
    """The job's variables are missing or contradict each other (one line, names the variable)."""


def _integer(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise TopologyError(f"{name}={value!r}: expected an integer") from None
    if number < 0:
        raise TopologyError(f"{name}={value!r}: must not be negative")
    return number


@dataclass(frozen=True)
class ReplicaTopology:
    """Where this replica sits in the job.

    Attributes:
        nnodes: replicas (pods) in the job.
        node_rank: this replica's index (0 is the Master).
        nproc_per_node: torchrun processes on this replica.
        master_addr: the rendezvous host (empty for a single node).
        master_port: the rendezvous port (0 for a single node).
    """

    nnodes: int = 1
    node_rank: int = 0
    nproc_per_node: int = 1
    master_addr: str = ""
    master_port: int = 0

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise TopologyError(f"nnodes ({self.nnodes}) and nproc_per_node ({self.nproc_per_node}) must be at "
                                "least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise TopologyError(f"node rank {self.node_rank} is outside 0..{self.nnodes - 1}")
        if self.nnodes > 1 and not (self.master_addr and self.master_port):
            raise TopologyError("a job with several nodes needs MASTER_ADDR and MASTER_PORT (or PET_MASTER_ADDR "
                                "and PET_MASTER_PORT)")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def is_master(self) -> bool:
        return self.node_rank == 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, nproc_per_node: int = 1) -> "ReplicaTopology":
        """The topology the operator injected; a standalone node when there is none.

        Args:
            environ: the variables (default: this process's).
            nproc_per_node: processes per node when the job does not say
                (``PET_NPROC_PER_NODE`` absent, as with the Training Operator before v1.7).
        """
        environ = os.environ if environ is None else environ
        if not in_training_job(environ):
            return cls(nproc_per_node=nproc_per_node)
        nproc = environ.get("PET_NPROC_PER_NODE", "")
        if nproc in ("auto", "gpu"):
            import torch

            per_node = torch.cuda.device_count() or 1
        elif nproc == "cpu":
            per_node = cpu_limit() or 1
        else:
            per_node = _integer(environ, "PET_NPROC_PER_NODE") or nproc_per_node
        nnodes = _integer(environ, "PET_NNODES")
        if nnodes is None:
            # Before v1.7 the Training Operator counted pods in WORLD_SIZE and ran one
            # process per pod; RANK is then the pod's index.
            nnodes = _integer(environ, "WORLD_SIZE") or 1
        node_rank = _integer(environ, "PET_NODE_RANK")
        if node_rank is None:
            node_rank = _integer(environ, "RANK") or 0
        address = environ.get("PET_MASTER_ADDR") or environ.get("MASTER_ADDR", "")
        port = _integer(environ, "PET_MASTER_PORT")
        if port is None:
            port = _integer(environ, "MASTER_PORT") or 0
        return cls(nnodes=nnodes, node_rank=node_rank, nproc_per_node=per_node, master_addr=address,
                   master_port=port)

    def torchrun_arguments(self) -> list[str]:
        """Explicit torchrun rendezvous arguments (they override any PET_* variable)."""
        if self.nnodes == 1:
            return ["--standalone", "--nnodes", "1", "--nproc_per_node", str(self.nproc_per_node)]
        return ["--nnodes", str(self.nnodes), "--node_rank", str(self.node_rank),
                "--nproc_per_node", str(self.nproc_per_node),
                "--master_addr", self.master_addr, "--master_port", str(self.master_port)]


def in_training_job(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a PyTorchJob or TrainJob replica (the operator set its variables)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in OPERATOR_VARIABLES)


def _cgroup_v2_limit(root: Path) -> float | None:
    path = root / "cpu.max"
    if not path.is_file():
        return None
    quota, _, period = path.read_text().strip().partition(" ")
    if quota == "max":
        return math.inf
    return int(quota) / int(period or 100000)


def _cgroup_v1_limit(root: Path) -> float | None:
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota_file, period_file = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text().strip())
            return math.inf if quota < 0 else quota / int(period_file.read_text().strip())
    return None


def cpu_limit(cgroup_root: str | os.PathLike = CGROUP_ROOT) -> int:
    """CPUs this container may use: the cgroup quota, capped by the CPUs it may run on."""
    root = Path(cgroup_root)
    quota = _cgroup_v2_limit(root)
    if quota is None:
        quota = _cgroup_v1_limit(root)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    if quota is None or quota == math.inf:
        return affinity
    # A fractional quota (1.5 CPUs) still runs one thread at full speed, not two.
    return max(1, min(affinity, int(quota)))


def thread_environment(nproc_per_node: int, environ: Mapping[str, str] | None = None,
                       cgroup_root: str | os.PathLike = CGROUP_ROOT) -> dict[str, str]:
    """Thread-pool sizes for each of ``nproc_per_node`` processes sharing this pod's CPUs.

    Variables the pod already sets are kept: an explicit ``OMP_NUM_THREADS`` in the job
    spec means what it says. (torchrun would otherwise set OMP_NUM_THREADS=1 for every
    process of a multi-process node.)
    """
    environ = os.environ if environ is None else environ
    cpus = cpu_limit(cgroup_root)
    per_process = str(max(1, cpus // max(1, nproc_per_node)))
    chosen = {name: environ.get(name) or per_process for name in THREAD_VARIABLES}
    logger.info("CPU limit %d for %d process(es): %s", cpus, nproc_per_node,
                ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return chosen
