"""torchrun entry point: FlagEmbedding's encoder-only embedder, resumable, checkpoints in S3.

Every process of a training replica runs this module (``components.train_replica`` starts
it under torchrun). On top of FlagEmbedding's own entry point it:

1. **Restores the weights on resume.** FlagEmbedding's model is a wrapper whose
   checkpoints hold only the inner transformer (``model.save`` → ``save_pretrained``), so
   the keys on disk (``encoder.layer.0...``) do not match the wrapper's
   (``model.encoder.layer.0...``). Without DeepSpeed the Trainer loads that file with
   ``strict=False``: nothing is loaded, and transformers 4.57 then fails on the wrapper
   lacking ``_keys_to_ignore_on_save``. (Under DeepSpeed the engine's own checkpoint holds
   the wrapper's full state and resumes correctly.) :func:`restore_embedder_weights` loads
   the file into the inner model, refusing any key that does not match, and logs a
   fingerprint of what it loaded.
2. **Uploads each checkpoint to S3 as it is saved** (:class:`StoreCheckpoints`): the
   first process of every node uploads that node's part in the background while training
   goes on (``components.checkpoint_store``), and the Master prunes old checkpoints.
3. Loads the optimizer state onto ``cpu`` in multi-process CPU training, where
   transformers asks ``torch.load`` for ``cpu:0`` and fails (the local simulation's case).
4. Freezes the word embeddings when ``SEARCHTUNE_FREEZE_WORD_EMBEDDINGS=1``
   (``components.flag_embedder_entry``).

Configuration comes through the environment, because FlagEmbedding's argument parser
refuses flags it does not know (``components.train_replica`` sets them):
``SEARCHTUNE_CHECKPOINT_URI`` (empty: no uploads), ``SEARCHTUNE_KEEP_STORE_CHECKPOINTS`` and
``SEARCHTUNE_FREEZE_WORD_EMBEDDINGS``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, TrainerCallback

from FlagEmbedding.finetune.embedder.encoder_only.base import EncoderOnlyEmbedderRunner, EncoderOnlyEmbedderTrainer

from components.train_replica import CHECKPOINT_URI_VARIABLE, FREEZE_VARIABLE, KEEP_CHECKPOINTS_VARIABLE, \
    STAGING_FOLDER

logger = logging.getLogger(__name__)

RESTORED_MESSAGE = "restored model weights from"
UPLOADED_MESSAGE = "uploaded checkpoint"
STARTED_MESSAGE = "training starts at step"

_original_load_from_checkpoint = EncoderOnlyEmbedderTrainer._load_from_checkpoint
_original_load_optimizer_and_scheduler = EncoderOnlyEmbedderTrainer._load_optimizer_and_scheduler
_original_load_trainer = EncoderOnlyEmbedderRunner.load_trainer


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names and bytes, in name order (any dtype, any device)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode("utf-8"))
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    single = [checkpoint_dir / SAFE_WEIGHTS_NAME, checkpoint_dir / WEIGHTS_NAME]
    indexes = [checkpoint_dir / SAFE_WEIGHTS_INDEX_NAME, checkpoint_dir / WEIGHTS_INDEX_NAME]
    files: list[Path] = []
    for path in single:
        if path.is_file():
            files = [path]
            break
    else:
        import json

        for index in indexes:
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                files = [checkpoint_dir / shard for shard in shards]
                break
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no model weights (model.safetensors or pytorch_model.bin)")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path), device="cpu"))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def restore_embedder_weights(model: torch.nn.Module, checkpoint_dir: str | os.PathLike) -> str:
    """Load a FlagEmbedding checkpoint's weights into the wrapper's inner model.

    Returns:
        the fingerprint (:func:`weights_fingerprint`) of the weights now in the model.

    Raises:
        RuntimeError: a key of the checkpoint is not in the model, or a weight of the
            model (other than those ``save_pretrained`` leaves out) is not in the checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    inner = getattr(model, "model", None)
    if not isinstance(inner, PreTrainedModel):
        raise TypeError(f"{type(model).__name__} does not wrap a transformers model in .model")
    state = _read_weights(checkpoint_dir)
    result = inner.load_state_dict(state, strict=False)
    # save_pretrained leaves out tied weights and the keys a model ignores on save.
    optional = set(getattr(inner, "_tied_weights_keys", None) or []) | set(inner._keys_to_ignore_on_save or [])
    missing = [key for key in result.missing_keys if key not in optional]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{checkpoint_dir}: the checkpoint does not match the model: "
                           f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    loaded = inner.state_dict()
    fingerprint = weights_fingerprint({name: loaded[name] for name in state})
    logger.warning("%s %s: %d tensors, sha256 %s", RESTORED_MESSAGE, checkpoint_dir, len(state), fingerprint)
    return fingerprint


def _load_from_checkpoint(self: EncoderOnlyEmbedderTrainer, resume_from_checkpoint, model=None):
    model = self.model if model is None else model
    if self.is_deepspeed_enabled or self.is_fsdp_enabled or not isinstance(getattr(model, "model", None),
                                                                          PreTrainedModel):
        return _original_load_from_checkpoint(self, resume_from_checkpoint, model)
    restore_embedder_weights(model, resume_from_checkpoint)


def _load_optimizer_and_scheduler(self: EncoderOnlyEmbedderTrainer, checkpoint):
    device = self.args.device
    if checkpoint is None or device.type != "cpu" or device.index is None:
        return _original_load_optimizer_and_scheduler(self, checkpoint)
    # In multi-process CPU training (gloo) transformers maps the optimizer state to
    # args.device, "cpu:0", a location torch.load cannot restore; it belongs on "cpu".
    load = torch.load

    def load_on_cpu(*args, **kwargs):
        if kwargs.get("map_location") == device:
            kwargs["map_location"] = "cpu"
        return load(*args, **kwargs)

    torch.load = load_on_cpu
    try:
        return _original_load_optimizer_and_scheduler(self, checkpoint)
    finally:
        torch.load = load


def _node_layout() -> tuple[int, int, bool]:
    """(node rank, nodes, whether this process uploads its node's part), from torchrun's variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return int(os.environ.get("GROUP_RANK", "0")), max(1, world // local_world), \
        int(os.environ.get("LOCAL_RANK", "0")) == 0


class StoreCheckpoints(TrainerCallback):
    """Uploads every checkpoint the Trainer saves to a :class:`CheckpointStore`.

    The first process of each node hard-links the checkpoint folder aside (so the
    Trainer's rotation cannot delete files mid-upload) and a background thread uploads it
    while training continues; the Master then prunes the store. ``on_train_end`` waits
    for the uploads still queued.
    """

    def __init__(self, uri: str, keep: int) -> None:
        from components.checkpoint_store import CheckpointStore

        self.store = CheckpointStore(uri)
        self.keep = keep
        self.node_rank, self.nnodes, self.uploads = _node_layout()
        self.pending: queue.Queue = queue.Queue()
        self.worker: threading.Thread | None = None
        self.failures: list[str] = []

    def _upload_loop(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                return
            staged, step = item
            started = time.monotonic()
            try:
                manifest = self.store.upload(staged, step, self.node_rank, self.nnodes)
                logger.warning("%s %d (node %d of %d): %d bytes in %.1f s", UPLOADED_MESSAGE, step, self.node_rank,
                               self.nnodes, manifest["total_bytes"], time.monotonic() - started)
                if self.node_rank == 0:
                    self.store.prune(self.keep)
            except Exception as error:  # a lost checkpoint must not stop the training
                self.failures.append(f"checkpoint-{step}: {error}")
                logger.error("checkpoint-%d was not stored: %s", step, error)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def on_save(self, args, state, control, **kwargs):
        # Every local process has written its random state before the node's part is taken.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if not self.uploads:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        staged = Path(args.output_dir) / STAGING_FOLDER / folder.name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(folder, staged, copy_function=os.link)
        if self.worker is None:
            self.worker = threading.Thread(target=self._upload_loop, name="checkpoint-upload", daemon=True)
            self.worker.start()
        self.pending.put((staged, state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self.worker is not None:
            self.pending.put(None)
            self.worker.join()
        if self.failures:
            logger.error("%d checkpoint(s) were not stored: %s", len(self.failures), "; ".join(self.failures))


class ResumeMismatchError(RuntimeError):
    """The processes of one job start from different steps."""


def agree_on_start_step(step: int) -> None:
    """Every process of the job must start from the same step, or all of them fail.

    Each node picks the newest complete checkpoint in the store on its own; one can complete
    between two nodes' picks (a survivor's background upload finishing while a lost node
    restarts). Training on from two steps would desynchronize the ranks' optimizer state and
    step counts, so every process compares, and on a mismatch every process raises at once:
    the job restarts, and the next attempt finds the store settled.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    steps: list = [None] * world
    torch.distributed.all_gather_object(steps, int(step))
    if len(set(steps)) > 1:
        by_rank = ", ".join(f"rank {rank}: {value}" for rank, value in enumerate(steps))
        raise ResumeMismatchError(f"the job's processes start from different checkpoints ({by_rank}): one "
                                  "completed in the store while the job restarted; every process stops so that "
                                  "the restarted job resumes from one checkpoint")


class AnnounceStart(TrainerCallback):
    """Checks that every process starts from the same step (after a resume: the
    checkpoint's), and logs it with a timestamp."""

    def on_train_begin(self, args, state, control, **kwargs):
        agree_on_start_step(state.global_step)
        if state.is_world_process_zero:
            logger.warning("%s %d of %d", STARTED_MESSAGE, state.global_step, state.max_steps)


def _load_trainer_with_store(self: EncoderOnlyEmbedderRunner):
    trainer = _original_load_trainer(self)
    trainer.add_callback(AnnounceStart())
    uri = os.environ.get(CHECKPOINT_URI_VARIABLE, "")
    if uri:
        trainer.add_callback(StoreCheckpoints(uri, int(os.environ.get(KEEP_CHECKPOINTS_VARIABLE, "2"))))
    return trainer


def install() -> None:
    """Apply the resume fix and the checkpoint upload to FlagEmbedding's runner."""
    EncoderOnlyEmbedderTrainer._load_from_checkpoint = _load_from_checkpoint
    EncoderOnlyEmbedderTrainer._load_optimizer_and_scheduler = _load_optimizer_and_scheduler
    EncoderOnlyEmbedderRunner.load_trainer = _load_trainer_with_store
    if os.environ.get(FREEZE_VARIABLE) == "1":
        import components.flag_embedder_entry  # noqa: F401  (freezes on import)


if __name__ == "__main__":
    from FlagEmbedding.finetune.embedder.encoder_only.base.__main__ import main

    # FlagEmbedding configures logging (INFO on the first process, WARNING elsewhere), which
    # is why this module reports at WARNING: every node's log shows restores and uploads.
    install()
    main()
