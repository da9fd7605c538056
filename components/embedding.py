"""Batch text encoding with a model's own pooling, instructions and lengths.

Shared by mining, the embedding teacher and evaluation, so all three see the same
vectors for the same model. Texts are sorted by token count and batched to a token budget (little padding),
run under ``torch.inference_mode`` and, where the hardware has it, in bf16 (CPU with
AVX-512 bf16 / AMX) or fp16 (GPU).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from components.config_values import check_config
from components.encoding_profiles import ModelProfile
from components.model_profiles import ResolvedModel

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class EncodeConfig:
    """How to run an encoder.

    Attributes:
        batch_size: at most this many texts per forward pass.
        max_batch_tokens: at most this many padded tokens per forward pass.
        precision: ``auto`` picks fp16 on GPU, bf16 on a CPU with native bf16, else fp32.
        device: ``auto`` (first GPU if any, else CPU), ``cpu``, or ``cuda:N``.
        show_progress: draw a progress bar.
    """

    batch_size: int = 256
    max_batch_tokens: int = 16384
    precision: Precision = "auto"
    device: str = "auto"
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_config(self)
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be at least 1")


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), where bf16 pays."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """CLS or attention-masked mean pooling, as FlagEmbedding and sentence-transformers do."""
    if pooling == "cls":
        return last_hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def load_tokenizer(model: ResolvedModel):
    """The model's tokenizer, loaded the same way everywhere in searchtune."""
    from transformers import AutoTokenizer

    # transformers 4.57.3+ warns about a Mistral regex for every local folder saved by a
    # 4.57.x release (huggingface/transformers#44031); these are not Mistral tokenizers.
    return AutoTokenizer.from_pretrained(model.path, fix_mistral_regex=False)


class TextEncoder:
    """Encodes queries and passages the way a model's profile says.

    Args:
        model: the resolved model (path and profile).
        config: batch size, precision, device.
    """

    def __init__(self, model: ResolvedModel, config: EncodeConfig = EncodeConfig()) -> None:
        from transformers import AutoModel

        self.model_ref = model
        self.profile: ModelProfile = model.profile
        self.config = config
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.precision, self.device)
        self.tokenizer = load_tokenizer(model)
        self.model = AutoModel.from_pretrained(model.path, dtype=self.dtype)
        self.model.to(self.device).eval()
        logger.info("encoder %s on %s in %s (%s pooling)", model.name, self.device, self.dtype,
                    self.profile.pooling)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self, kind: str) -> str:
        """Identifies vectors: same fingerprint, same vectors (model, the profile fields that
        shape this kind of text, kind, dtype). Query settings do not change passage vectors,
        so a step that reads queries differently still shares another's passage vectors."""
        side = "query" if kind == "query" else "passage"
        shaping = {name: value for name, value in self.profile.to_dict().items()
                   if name in ("pooling", "normalize") or name.startswith(side)}
        digest = hashlib.sha256()
        digest.update(repr((self.model_ref.path, shaping, kind, str(self.dtype))).encode())
        return digest.hexdigest()[:16]

    def encode_queries(self, texts: Sequence[str], description: str = "encode queries",
                       instructions: Sequence[str | None] | None = None) -> np.ndarray:
        """Query vectors; ``instructions[i]`` (a row's ``prompt``), where not None, replaces
        the profile's query instruction for ``texts[i]``, as in FlagEmbedding's training."""
        if instructions is None:
            formatted = [self.profile.format_query(t) for t in texts]
        else:
            if len(instructions) != len(texts):
                raise ValueError(f"{len(instructions)} instructions for {len(texts)} queries")
            formatted = [self.profile.format_query(t, i) for t, i in zip(texts, instructions)]
        return self._encode(formatted, self.profile.query_max_len, description)

    def encode_passages(self, texts: Sequence[str], description: str = "encode passages") -> np.ndarray:
        formatted = [self.profile.format_passage(t) for t in texts]
        return self._encode(formatted, self.profile.passage_max_len, description)

    def _encode(self, texts: list[str], max_length: int, description: str) -> np.ndarray:
        output = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return output
        encoded = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode(), tqdm(total=len(texts), desc=description, unit="text",
                                          disable=not self.config.show_progress, mininterval=2.0) as bar:
            for index in token_budget_batches(lengths, self.config.batch_size, self.config.max_batch_tokens):
                longest = int(lengths[index[0]])
                input_ids = torch.full((len(index), longest), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(index), longest), dtype=torch.long)
                for row, i in enumerate(index):
                    input_ids[row, :lengths[i]] = torch.as_tensor(encoded[i])
                    attention_mask[row, :lengths[i]] = 1
                input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                    return_dict=True).last_hidden_state
                vectors = pool(hidden, attention_mask, self.profile.pooling).float()
                if self.profile.normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                output[index] = vectors.cpu().numpy()
                bar.update(len(index))
        return output


def token_budget_batches(lengths: np.ndarray, max_texts: int, max_tokens: int) -> list[np.ndarray]:
    """Index batches, longest first, each holding at most ``max_texts`` texts and
    ``max_tokens`` padded tokens.

    Sorting by token count (not characters) leaves almost no padding, and filling a batch
    to a token budget keeps matrix products large for short texts, where a fixed count
    would leave the CPU's bf16 units half idle.
    """
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        size = max(1, min(max_texts, max_tokens // max(1, int(lengths[order[start]]))))
        batches.append(order[start:start + size])
        start += size
    return batches
