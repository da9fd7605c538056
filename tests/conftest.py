"""Shared fixtures: tiny random BERTs, small data sets, the public data folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEARCHTUNE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_tiny_bert(folder: Path, texts: list[str], pooling: str = "cls", seed: int = 0,
                    query_instruction: str = "", passage_instruction: str = "",
                    sequence_classification: bool = False) -> Path:
    """A random 2-layer BERT with a character vocabulary covering ``texts``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    from components.encoding_profiles import ModelProfile, write_model_profile

    folder.mkdir(parents=True, exist_ok=True)
    characters = sorted({c for text in texts + [query_instruction, passage_instruction] for c in text if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), tokenize_chinese_chars=True,
                                  do_lower_case=False)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    model = (BertForSequenceClassification if sequence_classification else BertModel)(config)
    model.save_pretrained(folder)
    if not sequence_classification:
        write_model_profile(folder, ModelProfile(pooling=pooling, query_instruction=query_instruction,
                                                 passage_instruction=passage_instruction,
                                                 query_max_len=64, passage_max_len=64))
    return folder


TINY_ROWS = [
    {"query": "夏天穿的轻薄连衣裙", "pos": ["雪纺夏装碎花裙 女"]},
    {"query": "冬天保暖的外套", "pos": ["加厚羽绒服 男 冬季"]},
    {"query": "宝宝用的奶瓶", "pos": ["婴儿玻璃奶瓶 宽口径"]},
    {"query": "防水的登山鞋", "pos": ["户外徒步鞋 防泼水 耐磨"]},
    {"query": "送老人的保温杯", "pos": ["中老年不锈钢保温杯 大容量"]},
    {"query": "学生用的双肩包", "pos": ["初中生书包 轻便 护脊"]},
    {"query": "厨房用的不粘锅", "pos": ["麦饭石不粘炒锅 家用"]},
    {"query": "跑步穿的运动鞋", "pos": ["缓震跑鞋 透气网面"]},
    {"query": "纯棉的床单", "pos": ["全棉四件套 床上用品"]},
    {"query": "手机充电器快充", "pos": ["65W氮化镓充电头"]},
    {"query": "孕妇穿的裤子", "pos": ["托腹孕妇裤 春秋款"]},
    {"query": "真丝睡衣女", "pos": ["桑蚕丝家居服 女士"]},
]
TINY_DISTRACTORS = ["连衣裙收纳挂袋", "夏天用的小风扇", "羽绒服清洗剂", "奶瓶刷 海绵", "登山杖 碳素",
                    "保温饭盒", "书包挂件", "锅铲 硅胶", "运动袜 男", "床单夹 防滑", "数据线 1米", "孕妇枕"]


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return [r["query"] for r in TINY_ROWS] + [p for r in TINY_ROWS for p in r["pos"]] + TINY_DISTRACTORS


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_texts) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tiny_texts)


@pytest.fixture()
def tiny_dataset(tmp_path) -> dict[str, Path]:
    """Rows and a distractor corpus as JSONL files."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TINY_ROWS), encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(TINY_DISTRACTORS)), encoding="utf-8")
    return {"rows": rows, "corpus": corpus}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole session, with a ``data`` bucket."""
    from tests.s3_server import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture()
def s3_environment(s3_server, monkeypatch):
    """Points boto3 (and searchtune) at the test server for one test."""
    for key, value in s3_server.environment.items():
        monkeypatch.setenv(key, value)
    return s3_server
