"""`searchtune pull-model`: the serving chart's init container, against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import logging

import pytest

from components.object_store import COMPLETION_MARKER, upload_folder
from components.model_profiles import BGE_ZH_QUERY_INSTRUCTION
from pipelines.cli import main
from tests.conftest import build_tiny_bert

TEXTS = ["夏天穿的轻薄连衣裙", "雪纺夏装碎花裙 女"]


def _upload(tmp_path, name: str, uri: str, **profile) -> str:
    upload_folder(build_tiny_bert(tmp_path / name, TEXTS, **profile), uri)
    return uri


def test_pulls_a_bge_style_model_and_names_the_instruction_clients_must_add(tmp_path, s3_environment, capsys,
                                                                              caplog):
    uri = _upload(tmp_path, "bge", "s3://data/serving/bge/model/", pooling="cls",
                  query_instruction=BGE_ZH_QUERY_INSTRUCTION)
    output = tmp_path / "models" / "bge"
    with caplog.at_level(logging.WARNING):
        code = main(["pull-model", "--uri", uri, "--output", str(output), "--serving-engine", "sglang"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(output)
    assert (output / "model.safetensors").is_file() and (output / COMPLETION_MARKER).is_file()
    assert (output / "searchtune_profile.json").is_file()
    assert f"clients must put {BGE_ZH_QUERY_INSTRUCTION!r} before every query" in caplog.text
    assert "INCOMPATIBLE" not in caplog.text


def test_refuses_a_mean_pooled_model_and_leaves_nothing(tmp_path, s3_environment, capsys):
    uri = _upload(tmp_path, "e5", "s3://data/serving/e5/model/", pooling="mean", query_instruction="query: ",
                  passage_instruction="passage: ")
    output = tmp_path / "models" / "e5"
    code = main(["pull-model", "--uri", uri, "--output", str(output), "--serving-engine", "sglang"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"searchtune: error: {uri}: SGLang cannot serve this model as it was trained: "
                              "the model pools with 'mean'")
    assert "Traceback" not in "\n".join(err)
    assert not output.exists() and not list(output.parent.iterdir())


def test_refuses_an_architecture_whose_sglang_pooling_is_not_known(tmp_path, s3_environment, capsys):
    import json

    model = build_tiny_bert(tmp_path / "decoder", TEXTS, pooling="cls")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen3ForCausalLM"]}), encoding="utf-8")
    upload_folder(model, "s3://data/serving/decoder/model/")
    code = main(["pull-model", "--uri", "s3://data/serving/decoder/model/", "--output", str(tmp_path / "out"),
                 "--serving-engine", "sglang"])
    assert code == 2 and not (tmp_path / "out").exists()
    assert "config.json names ['Qwen3ForCausalLM']" in capsys.readouterr().err


def test_serves_it_anyway_with_a_loud_warning_when_allowed(tmp_path, s3_environment, caplog):
    uri = _upload(tmp_path, "e5", "s3://data/serving/e5-allowed/model/", pooling="mean")
    output = tmp_path / "models" / "e5"
    with caplog.at_level(logging.WARNING):
        code = main(["pull-model", "--uri", uri, "--output", str(output), "--serving-engine", "sglang",
                     "--allow-incompatible-profile"])
    assert code == 0 and (output / "config.json").is_file()
    assert "SERVING AN INCOMPATIBLE MODEL" in caplog.text and "pools with 'mean'" in caplog.text


def test_without_an_engine_it_only_downloads(tmp_path, s3_environment):
    uri = _upload(tmp_path, "e5", "s3://data/serving/plain/model/", pooling="mean")
    assert main(["pull-model", "--uri", uri, "--output", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "config.json").is_file()


@pytest.mark.parametrize("damage", ["no marker", "file missing"])
def test_refuses_an_unfinished_folder(tmp_path, s3_environment, capsys, damage):
    uri = _upload(tmp_path, "bge", f"s3://data/serving/{damage.replace(' ', '-')}/model/", pooling="cls")
    prefix = uri[len("s3://data/"):]
    key = COMPLETION_MARKER if damage == "no marker" else "model.safetensors"
    s3_environment.client().delete_object(Bucket="data", Key=prefix + key)
    output = tmp_path / "models" / "bge"
    code = main(["pull-model", "--uri", uri, "--output", str(output), "--serving-engine", "sglang"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    expected = "no completion marker" if damage == "no marker" else "model.safetensors is listed in the completion marker"
    assert expected in err.splitlines()[-1]
    assert not output.exists()
