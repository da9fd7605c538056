"""The parity step against real HTTP servers (uvicorn in a thread: several servers, one
import): one served as trained, one mean-pooled model served with CLS pooling, one that lost
its profile and normalization and cuts passages short."""

from __future__ import annotations

import json
import shutil

import pytest
from tests.conftest import build_tiny_bert
from tests.http_servers import ThreadedServer

from components.encoding_profiles import PROFILE_FILENAME
from components.parity import PROBES_PATH, ParityConfig, ParityError, check_serving_parity
from components.serving import ServeConfig, free_port
from pipelines.cli import main

ENGLISH = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:,.-，。：、；？")


@pytest.fixture(scope="module")
def tiny_e5(tmp_path_factory, tiny_texts):
    """An e5-style (mean-pooled, query:/passage:) model whose vocabulary covers the probes."""
    probes = json.loads(PROBES_PATH.read_text(encoding="utf-8"))
    texts = tiny_texts + [p["text"] for p in probes["queries"] + probes["passages"]] + [probes["long_text"], ENGLISH]
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-e5", texts, pooling="mean",
                           query_instruction="query: ", passage_instruction="passage: ", seed=5)


def _server(model, **overrides) -> ThreadedServer:
    return ThreadedServer(ServeConfig(model=str(model), served_model_name="tiny-e5", port=0, precision="fp32",
                                      device="cpu", **overrides))


@pytest.fixture(scope="module")
def faithful_server(tiny_e5):
    with _server(tiny_e5) as server:
        yield server


def test_a_server_that_serves_the_model_as_trained_passes_in_both_instruction_modes(tiny_e5, faithful_server,
                                                                                   tmp_path):
    for mode in ("client", "server"):
        result = check_serving_parity(str(tiny_e5), faithful_server.base_url, tmp_path / mode,
                                      ParityConfig(instruction_mode=mode, device="cpu"))
        assert result.passed and result.diagnosis == []
        assert len(result.probes) == 10
        assert all(row["cosine"] >= 0.9999 for row in result.probes)
        limits = [row for row in result.probes if "length limit" in row["label"]]
        assert [row["tokens"] for row in limits] == [64, 64]  # probes exactly at the trained limits
        assert {row["kind"] for row in result.probes} == {"query", "passage"}
        assert "served as trained" in (tmp_path / mode / "parity.md").read_text(encoding="utf-8")


def test_a_mean_pooled_model_served_with_cls_pooling_fails_and_pooling_is_named(tiny_e5, tmp_path):
    with _server(tiny_e5, pooling="cls") as server:
        with pytest.raises(ParityError) as caught:
            check_serving_parity(str(tiny_e5), f"{server.base_url}/v1", tmp_path, ParityConfig(device="cpu"))
    pooling = "pooling: the server pools CLS; the model was trained with MEAN pooling"
    assert f"queries: {pooling}" in str(caught.value) and f"passages: {pooling}" in str(caught.value)
    written = json.loads((tmp_path / "parity.json").read_text(encoding="utf-8"))
    assert written["passed"] is False
    assert written["diagnosis"] == [f"queries: {pooling}", f"passages: {pooling}"]
    assert min(row["cosine"] for row in written["probes"]) < 0.999


def test_lost_profile_no_normalization_and_a_short_limit_are_each_named(tiny_e5, tmp_path, tmp_path_factory):
    # A copy without searchtune_profile.json and the sentence-transformers prompts: the server
    # falls back to the pooling config (mean pooling, no instructions); normalization off;
    # passages cut at 32 tokens.
    copy = tmp_path_factory.mktemp("copy") / "tiny-e5"
    shutil.copytree(tiny_e5, copy, ignore=shutil.ignore_patterns(PROFILE_FILENAME, "config_sentence_transformers.json"))
    with _server(copy, normalize=False, passage_max_len=32) as server:
        with pytest.raises(ParityError):
            check_serving_parity(str(tiny_e5), server.base_url, tmp_path,
                                 ParityConfig(instruction_mode="server", device="cpu"))
    diagnosis = json.loads((tmp_path / "parity.json").read_text(encoding="utf-8"))["diagnosis"]
    assert "queries: instruction: the query instruction 'query: ' is missing (SGLang adds none: the client must " \
           "prepend it)" in diagnosis
    assert "passages: instruction: the passage instruction 'passage: ' is missing (SGLang adds none: the client " \
           "must prepend it)" in diagnosis
    assert any(line.startswith("passages: truncation: the server refused the passage at the length limit "
                               "(64 tokens): HTTP 400: input[0] has") for line in diagnosis)
    assert any(line.startswith("normalization: served vectors have length") and
               line.endswith("the trained model's are normalized to length 1") for line in diagnosis)


def test_parity_command_exits_0_when_served_as_trained_and_1_with_the_reason(tiny_e5, faithful_server, tmp_path,
                                                                           capsys):
    assert main(["parity", "--model", str(tiny_e5), "--endpoint", faithful_server.base_url,
                 "--output-dir", str(tmp_path / "ok"), "--device", "cpu"]) == 0
    assert "Serving parity: served as trained" in capsys.readouterr().out
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert main(["parity", "--model", str(tiny_e5), "--endpoint", unreachable, "--output-dir",
                 str(tmp_path / "down"), "--device", "cpu"]) == 1
    assert f"cannot reach the serving endpoint {unreachable}/v1" in capsys.readouterr().err
