"""sbert serve under hostile requests and signals (issue 21): each case -> the status (or exit code) and one error line.

A joint fill-mask that would hold the model thread for minutes, a request over the work budget, a client that
half-closes its socket, a lone surrogate, /docs offline, the classifier's truncation, and a shutdown while the model
thread is busy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import make_hf_checkpoint
from tests.test_serve import running
from sbert_cli.serve import ModelService

LABELS = {0: "finance", 1: "sports", 2: "game"}
LONG_TEXT = "今天天气很好，我们去公园散步吧。" * 20  # 320 characters: past any truncation below


@pytest.fixture(scope="module")
def both_heads_dir(tmp_path_factory) -> Path:
    """A tiny classifier with an MLM head and 512 positions, whose tokenizer_config.json says model_max_length 16
    (as many hub checkpoints do) while its sbert.json-less config says nothing of the length it was trained with."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("serve-limits")
    model_dir = make_hf_checkpoint(root / "both", "cls", id2label=LABELS, max_position_embeddings=512)
    mlm = load_file(make_hf_checkpoint(root / "mlm", "mlm", seed=1, max_position_embeddings=512) / "model.safetensors")
    state = load_file(model_dir / "model.safetensors")
    state.update({k: v for k, v in mlm.items() if k.startswith("cls.predictions.")})
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}), encoding="utf-8")
    return model_dir


@pytest.fixture(scope="module")
def service(both_heads_dir):
    return ModelService(both_heads_dir, precision="fp32", device="cpu")


def raw_request(port: int, method: str, path: str, body: bytes = b"", half_close: bool = False) -> tuple[int, bytes]:
    """(status, body) over a raw socket; half_close: shut down the sending side right after the request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode() + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                header, _, rest = received.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    if not received:
        return 0, b""
    header, _, rest = received.partition(b"\r\n\r\n")
    return int(header.split(b" ")[1]), rest


def post(port: int, path: str, payload) -> tuple[int, object]:
    status, body = raw_request(port, "POST", path, json.dumps(payload, ensure_ascii=False).encode())
    return status, json.loads(body)


def test_a_client_that_half_closes_after_its_request_gets_the_answer(service):
    with running(service) as (port, _):
        for _ in range(3):
            status, body = raw_request(port, "POST", "/predict", json.dumps({"texts": ["股市大涨"]}).encode(), half_close=True)
            assert status == 200 and json.loads(body)[0]["text"] == "股市大涨"


def test_a_lone_surrogate_is_answered_cleanly(service):
    with running(service) as (port, _):
        for path in ("/predict", "/embed", "/fill-mask"):
            text = "a\\ud800b" + ("[MASK]" if path == "/fill-mask" else "")
            status, body = raw_request(port, "POST", path, ('{"texts": ["%s"]}' % text).encode())
            assert status in (200, 422), (path, status, body)
            answer = json.loads(body)
            if status == 200:
                assert answer[0]["text"] == "a\ud800b" + ("[MASK]" if path == "/fill-mask" else "")  # as it was sent
            else:
                assert "error" in answer


def test_docs_work_offline(service):
    with running(service) as (port, _):
        status, page = raw_request(port, "GET", "/docs")
        assert status == 200
        html = page.decode()
        assert "POST /predict" in html and "POST /fill-mask" in html and "/openapi.json" in html
        assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
        status, schema = raw_request(port, "GET", "/openapi.json")
        assert status == 200 and "/embed" in json.loads(schema)["paths"]


def test_serve_truncates_the_classifier_where_predict_does(service, both_heads_dir):
    from sbert_cli.tasks.cls_predict import load_classifier

    predicting = load_classifier(both_heads_dir, precision="fp32", device="cpu")
    assert service.classifier.max_length == predicting.max_length == 512  # not tokenizer_config's 16
    assert service.embedder.max_length == 16  # embeddings follow sentence-transformers' rule, as `sbert embed` does
    with running(service) as (port, _):
        status, answer = post(port, "/predict", {"texts": [LONG_TEXT], "top_k": 3})
    assert status == 200
    expected = predicting.probabilities([LONG_TEXT])[0]
    served = {label["label"]: label["score"] for label in answer[0]["labels"]}
    assert np.allclose([served[name] for name in predicting.label_names], expected, atol=1e-5)


def test_a_joint_fill_mask_of_500_masks_is_refused_before_it_runs(service):
    with running(service) as (port, _):
        start = time.perf_counter()
        status, answer = post(port, "/fill-mask", {"texts": ["[MASK]" * 500], "joint": True, "top_k": 100})
        assert time.perf_counter() - start < 5
        assert status == 422 and "500 consecutive [MASK]" in answer["error"] and "joint" in answer["error"]
        # the same text without joint is one forward pass
        status, answer = post(port, "/fill-mask", {"texts": ["[MASK]" * 500], "top_k": 1})
        assert status == 200 and len(answer[0]["masks"]) == 500
        assert post(port, "/embed", {"texts": ["还在"]})[0] == 200  # nobody was held up


def test_a_request_over_the_work_budget_is_413_before_it_runs(service):
    texts = ["北京是[MASK]国的首都。" * 8] * 16
    assert service.work("fill-mask", (1000, False), texts) > 100_000
    with running(service, max_work=100_000) as (port, _):
        status, answer = post(port, "/fill-mask", {"texts": texts, "top_k": 1000})
        assert status == 413 and "100,000" in answer["error"] and "top_k" in answer["error"]
        status, _ = post(port, "/fill-mask", {"texts": texts, "top_k": 5})
        assert status == 200


def test_serve_names_no_request_field_it_does_not_take(service):
    with running(service) as (port, _):
        status, answer = post(port, "/fill-mask", {"texts": ["[MASK]" + "好" * 600]})
    assert status == 422 and "512 positions" in answer["error"]
    assert "truncate" not in answer["error"] and "on_bad_lines" not in answer["error"]


SLOW_SERVER = """
import sys, time
from sbert_cli.serve import runner, service
from sbert_cli.serve.service import ServeOptions
run = service.ModelService.run
def slow(self, kind, options, texts):
    time.sleep(300)  # a batch that outlasts any graceful time
    return run(self, kind, options, texts)
service.ModelService.run = slow
runner.serve(sys.argv[1], port=int(sys.argv[2]), options=ServeOptions(graceful_timeout_s=2), device="cpu", precision="fp32")
print("returned normally")
"""


def _healthy(port: int) -> dict | None:
    try:
        status, body = raw_request(port, "GET", "/health")
        return json.loads(body) if status == 200 else None
    except OSError:
        return None


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGINT)])
def test_a_stop_signal_ends_the_process_within_the_graceful_time_while_the_model_is_busy(both_heads_dir, signals):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(both_heads_dir), str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not _healthy(port):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() else "slow start"
            time.sleep(0.2)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: _quietly(lambda: post(port, "/embed", {"texts": ["一句"]})))
            while (_healthy(port) or {}).get("running_texts") != 1:
                time.sleep(0.05)
            start = time.monotonic()
            for sig in signals:
                process.send_signal(sig)
                time.sleep(0.1)
            code = process.wait(20)
        assert time.monotonic() - start < 2 + 8  # the graceful 2 s, then out
        assert code == 1
        _, stderr = process.communicate()
        assert "abandoned" in stderr and "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _quietly(call):
    try:
        return call()
    except OSError:
        return None


def test_max_work_is_a_flag_with_a_range(both_heads_dir):
    from cli_helpers import one_line_error
    from typer.testing import CliRunner

    from sbert_cli.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(both_heads_dir), "--port", "0", "--max-work", "0"])
    one_line_error(result, "--max-work", "at least 1" if "at least" in result.stderr else "between 1")


def test_a_model_without_an_mlm_head_is_told_the_whole_recipe(tmp_path):
    encoder = ModelService(make_hf_checkpoint(tmp_path / "encoder", "base"), precision="fp32", device="cpu")
    with running(encoder) as (port, _):
        status, answer = post(port, "/fill-mask", {"texts": ["我[MASK]你"]})
    assert status == 404 and answer["error"].index("sbert make-mlm-data") < answer["error"].index("sbert pretrain")
