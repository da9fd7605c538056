"""`searchtune serve`: a real server process on 127.0.0.1, called with the official openai
client exactly as a user calls it; vectors checked against in-process encoding."""

from __future__ import annotations

import base64
import random
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from tests.conftest import build_tiny_bert

from components.embedding import EncodeConfig, TextEncoder
from components.model_profiles import resolve_model
from components.serving import BatchWorker, ServeConfig, ServerProcess
from pipelines.cli import main

MODEL_NAME = "tiny-e5"
API_KEY = "test-key"
MAX_INPUTS = 16
MAX_REQUEST_BYTES = 16_384
ENGLISH = ["red summer dress", "waterproof hiking shoes", "a thermos for my grandfather"]


@pytest.fixture(scope="module")
def tiny_e5(tmp_path_factory, tiny_texts):
    """An e5-style model: mean pooling, ``query: `` / ``passage: `` instructions."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-e5", tiny_texts + ENGLISH, pooling="mean",
                           query_instruction="query: ", passage_instruction="passage: ", seed=3)


@pytest.fixture(scope="module")
def server(tiny_e5, tmp_path_factory):
    config = ServeConfig(model=str(tiny_e5), served_model_name=MODEL_NAME, port=0, api_key=API_KEY,
                         precision="fp32", device="cpu", max_inputs_per_request=MAX_INPUTS, batch_wait_ms=20,
                         max_request_bytes=MAX_REQUEST_BYTES)
    process = ServerProcess(config, log_path=tmp_path_factory.mktemp("server") / "server.log").start()
    yield process
    # Every bad request of this module went through it: it must still be running and stop cleanly.
    assert process.process.poll() is None, process.log_path.read_text()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (exit status -15).
    assert process.stop() in (0, -15)
    assert "Application shutdown complete" in process.log_path.read_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def in_process(tiny_e5):
    return TextEncoder(resolve_model(tiny_e5), EncodeConfig(precision="fp32", device="cpu", show_progress=False))


def _vectors(response) -> np.ndarray:
    """The response's vectors; an explicit ``encoding_format="base64"`` leaves decoding to the caller."""
    rows = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
    if rows and isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows])
    return np.array(rows, dtype=np.float32)


def test_a_string_and_a_list_embed_as_in_process_in_float_and_base64(client, in_process, tiny_texts):
    single = client.embeddings.create(model=MODEL_NAME, input="passage: " + tiny_texts[0])
    assert single.model == MODEL_NAME and single.object == "list" and len(single.data) == 1
    np.testing.assert_allclose(_vectors(single), in_process.encode_passages(tiny_texts[:1]), atol=1e-5)

    passages = tiny_texts[12:20]
    for encoding_format in ("float", "base64"):
        response = client.embeddings.create(model=MODEL_NAME, input=["passage: " + p for p in passages],
                                            encoding_format=encoding_format)
        assert [item.index for item in response.data] == list(range(len(passages)))
        np.testing.assert_allclose(_vectors(response), in_process.encode_passages(passages), atol=1e-5)
        assert response.usage.prompt_tokens == response.usage.total_tokens > len(passages)
    norms = np.linalg.norm(_vectors(response), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # the profile normalizes


def test_raw_text_gets_no_instruction_and_input_type_adds_the_profiles(client, in_process):
    queries = ["夏天穿的轻薄连衣裙", "red summer dress"]
    expected = in_process.encode_queries(queries)
    client_side = _vectors(client.embeddings.create(model=MODEL_NAME, input=["query: " + q for q in queries]))
    server_side = _vectors(client.embeddings.create(model=MODEL_NAME, input=queries,
                                                    extra_body={"input_type": "query"}))
    np.testing.assert_allclose(client_side, expected, atol=1e-5)
    np.testing.assert_allclose(server_side, expected, atol=1e-5)
    raw = _vectors(client.embeddings.create(model=MODEL_NAME, input=queries))
    assert np.all(np.sum(raw * expected, axis=1) < 0.9999)  # the instruction is not added silently

    passages = _vectors(client.embeddings.create(model=MODEL_NAME, input=["保温杯"],
                                                 extra_body={"input_type": "passage"}))
    np.testing.assert_allclose(passages, in_process.encode_passages(["保温杯"]), atol=1e-5)


def test_models_lists_the_served_model_with_its_profile(client, in_process):
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL_NAME]
    card = client.models.retrieve(MODEL_NAME)
    assert card.model_extra["dimension"] == in_process.dimension
    assert card.model_extra["searchtune_profile"]["pooling"] == "mean"
    assert card.model_extra["searchtune_profile"]["query_instruction"] == "query: "
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("another-model")


BAD_REQUESTS = [
    ({"input": ""}, 400, "input", "empty string"),
    ({"input": []}, 400, "input", "empty list"),
    ({"input": ["a"] * (MAX_INPUTS + 1)}, 400, "input", f"at most {MAX_INPUTS}"),
    ({"input": "夏" * 100}, 400, "input", "at most 64"),
    ({"input": [101, 102]}, 400, "input", "token-id input is not supported"),
    ({"input": "x", "model": "gpt-4"}, 404, "model", "does not exist"),
    ({"input": "x", "dimensions": 8}, 400, "dimensions", "does not support dimensions=8"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", "'float' or 'base64'"),
    ({"input": "x", "extra_body": {"input_type": "document"}}, 400, "input_type", "'query', 'passage'"),
    ({"input": "x", "extra_body": {"normalize": False}}, 400, "normalize", "unknown field 'normalize'"),
]


@pytest.mark.parametrize("arguments,status,param,message", BAD_REQUESTS,
                         ids=[case[3] for case in BAD_REQUESTS])
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(client, server, arguments, status, param,
                                                                       message):
    arguments = {"model": MODEL_NAME, **arguments}
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(**arguments)
    assert caught.value.status_code == status
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]
    assert httpx.get(f"{server.base_url}/ready").status_code == 200


def test_malformed_json_a_wrong_key_and_unknown_paths_get_openai_errors(server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    reply = httpx.post(f"{server.base_url}/v1/embeddings", content=b'{"model": "tiny-e5", "input": ', headers=headers)
    assert reply.status_code == 400 and "could not parse the JSON body" in reply.json()["error"]["message"]
    reply = httpx.post(f"{server.base_url}/v1/embeddings", content=b"[1, 2]", headers=headers)
    assert reply.status_code == 400 and "JSON object" in reply.json()["error"]["message"]
    reply = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": MODEL_NAME, "input": "x"},
                       headers={"Authorization": "Bearer wrong"})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    reply = httpx.get(f"{server.base_url}/v1/completions")
    assert reply.status_code == 404 and "error" in reply.json()
    assert httpx.get(f"{server.base_url}/v1/embeddings").status_code == 405


def test_an_oversized_body_is_refused_declared_or_chunked_and_deep_nesting_is_a_400(server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    url = f"{server.base_url}/v1/embeddings"
    oversized = ('{"model": "%s", "input": "%s"}' % (MODEL_NAME, "x" * MAX_REQUEST_BYTES)).encode()
    reply = httpx.post(url, content=oversized, headers=headers)
    assert reply.status_code == 413 and "over the limit" in reply.json()["error"]["message"]

    def chunks():  # a generator body goes out chunked, with no Content-Length to check
        for start in range(0, len(oversized), 4096):
            yield oversized[start:start + 4096]

    reply = httpx.post(url, content=chunks(), headers=headers)
    assert reply.status_code == 413 and "over the limit" in reply.json()["error"]["message"]
    reply = httpx.post(url, content=b"[" * 5000 + b"]" * 5000, headers=headers)
    assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"]["message"]
    assert httpx.get(f"{server.base_url}/ready").status_code == 200


def test_a_cancelled_request_neither_stops_the_worker_nor_gets_encoded(in_process, tiny_texts):
    """A request whose client goes away cancels its future while it waits in a batch."""
    token_ids = [in_process.tokenizer(text)["input_ids"] for text in tiny_texts[:3]]
    seen = []
    worker = BatchWorker(in_process, max_batch_texts=64, max_batch_tokens=4096, wait_s=0.5,
                         observe=lambda texts, tokens, seconds: seen.append(texts))
    try:
        kept, dropped = worker.submit(token_ids[:2]), worker.submit(token_ids[2:])
        assert dropped.cancel()  # still gathering: the worker waits 0.5 s for company
        assert kept.result(timeout=30).shape == (2, in_process.dimension)
        assert seen == [2]  # the cancelled request's text was not encoded
        later = worker.submit(token_ids[:1])
        assert later.result(timeout=30).shape == (1, in_process.dimension)
        assert worker.alive
    finally:
        worker.close()


def test_truncate_keeps_the_first_tokens_as_in_process_encoding_does(client, in_process):
    long_passage = "加厚羽绒服 男 冬季" * 20
    response = client.embeddings.create(model=MODEL_NAME, input=long_passage,
                                        extra_body={"input_type": "passage", "truncate": True})
    np.testing.assert_allclose(_vectors(response), in_process.encode_passages([long_passage]), atol=1e-5)
    assert response.usage.prompt_tokens == 64


def test_concurrent_requests_share_forward_passes_and_metrics_count_them(client, server):
    before = _metric(server, "searchtune_batch_texts_count")
    requests = 32
    barrier = threading.Barrier(requests)
    failures = []

    def one_request(index: int) -> None:
        barrier.wait()
        try:
            client.embeddings.create(model=MODEL_NAME, input=f"passage: 保温杯 {index}")
        except Exception as error:  # collected: an assert in a thread would be lost
            failures.append(error)

    threads = [threading.Thread(target=one_request, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    rounds = _metric(server, "searchtune_batch_texts_count") - before
    assert 1 <= rounds < requests
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    assert _metric(server, 'searchtune_http_requests_total{path="/v1/embeddings",status="200"}') >= requests


def _metric(server, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_load_16_clients_for_20_seconds_without_errors_and_with_in_process_vectors(server, in_process, tiny_texts):
    queries, passages = tiny_texts[:12] + ENGLISH, tiny_texts[12:]
    expected = {("query", t): v for t, v in zip(queries, in_process.encode_queries(queries))}
    expected.update({("passage", t): v for t, v in zip(passages, in_process.encode_passages(passages))})
    stop_at = time.monotonic() + 20
    counts = {"requests": 0, "vectors": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)
        while time.monotonic() < stop_at:
            kind = rng.choice(["query", "passage"])
            texts = rng.sample(queries if kind == "query" else passages, rng.randint(1, 4))
            try:
                response = client.embeddings.create(model=MODEL_NAME, input=texts, extra_body={"input_type": kind})
                got = _vectors(response)
                want = np.stack([expected[(kind, t)] for t in texts])
                if not np.allclose(got, want, atol=1e-5):
                    raise AssertionError(f"vectors differ from in-process ones for {texts}")
            except Exception as error:
                with lock:
                    failures.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                counts["requests"] += 1
                counts["vectors"] += len(texts)

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert counts["requests"] >= 16


def test_serve_refuses_bad_options_with_exit_code_2(capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path), "--ui"]) == 2
    assert "--ui needs --corpus" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "missing-model")]) == 2
    assert "missing-model': no such folder" in capsys.readouterr().err
