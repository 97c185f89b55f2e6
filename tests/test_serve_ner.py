"""`sbert serve` on a tagger: POST /ner answers as `sbert predict --json` does, batched by the one batcher; /info
lists the entity types; a model without a tagging head says so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app as cli_app
from sbert_cli.serve import ModelService
from tests.test_ner_predict import tagger_dir  # noqa: F401  (the fixture: a tiny CRF tagger)
from tests.test_serve import CountingService, post, running

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["张伟昨天去了北京。", "王芳在华为公司工作。", "iPhone 15在上海卖１２３元", "今天天气很好"]


@pytest.fixture(scope="module")
def service(tagger_dir):  # noqa: F811
    return ModelService(tagger_dir[0], precision="fp32", device="cpu")


def test_ner_answers_as_predict_json(service, tagger_dir, tmp_path):  # noqa: F811
    with running(service) as (port, _):
        status, _, answer = post(port, "/ner", {"texts": TEXTS})
    assert status == 200
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli_app, ["predict", "--model", str(tagger_dir[0]), "--file", str(texts), "--json",
                                          "--precision", "fp32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert answer == [json.loads(line) for line in result.stdout.splitlines()]
    assert any(row["entities"] for row in answer)
    for row in answer:
        for entity in row["entities"]:
            assert row["text"][entity["start"] : entity["end"]] == entity["text"]


def test_ner_requests_are_batched_together(service):
    counting = CountingService(service, delay_s=0.2)
    from concurrent.futures import ThreadPoolExecutor

    with running(counting, max_wait_ms=100) as (port, _):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda text: post(port, "/ner", {"texts": [text]}), TEXTS))
    assert all(status == 200 for status, _, _ in answers)
    assert len(counting.calls) < len(TEXTS)  # the one DynamicBatcher put requests together


def test_info_lists_the_entity_types_and_endpoints(service):
    info = service.info()
    assert info["labels"] == ["LOC", "ORG", "PER"] and info["heads"] == ["ner"]
    assert info["endpoints"] == ["/embed", "/ner"] and info["crf"] is True


def test_a_model_without_a_tagger_answers_404(tmp_path_factory):
    from conftest import make_hf_checkpoint

    base = ModelService(make_hf_checkpoint(tmp_path_factory.mktemp("serve-ner") / "base", "base"), precision="fp32",
                        device="cpu")
    with running(base) as (port, _):
        status, _, answer = post(port, "/ner", {"texts": ["张伟"]})
    assert status == 404 and "has no tagging head" in answer["error"] and "sbert train-ner" in answer["error"]
