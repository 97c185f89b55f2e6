"""sbert_cli/serve/ and `sbert serve`, over real HTTP on 127.0.0.1: endpoints, errors, batching, shutdown."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app as cli_app
from sbert_cli.errors import ConfigError
from sbert_cli.serve import ModelService, ServeOptions, bind_socket, create_app, make_server

from conftest import make_hf_checkpoint

LABELS = {0: "finance", 1: "sports", 2: "game"}
TEXTS = ["今天天气很好，我们去公园散步吧。", "股市大涨", "新款网络游戏今日公测，玩家排队等候", "中国足球队昨晚3比0战胜对手"]
MASKED = ["北京是[MASK]国的首都。", "我喜欢[MASK][MASK]的风景。"]


@pytest.fixture(scope="module")
def both_heads_dir(tmp_path_factory) -> Path:
    """A tiny random classifier that also carries an MLM head (cls.predictions.*): every endpoint served."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("serve")
    model_dir = make_hf_checkpoint(root / "both", "cls", id2label=LABELS)
    mlm = load_file(make_hf_checkpoint(root / "mlm", "mlm", seed=1) / "model.safetensors")
    state = load_file(model_dir / "model.safetensors")
    state.update({k: v for k, v in mlm.items() if k.startswith("cls.predictions.")})
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return model_dir


@pytest.fixture(scope="module")
def service(both_heads_dir):
    return ModelService(both_heads_dir, precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def encoder_service(tmp_path_factory):
    """A bare encoder (BertModel), no heads: /embed only."""
    return ModelService(make_hf_checkpoint(tmp_path_factory.mktemp("serve") / "base", "base"), precision="fp32", device="cpu")


class CountingService:
    """The service, with its model calls counted (and optionally slowed down)."""

    def __init__(self, service, delay_s: float = 0.0):
        self.service, self.delay_s, self.calls = service, delay_s, []

    def __getattr__(self, name):
        return getattr(self.service, name)

    def run(self, kind, options, texts):
        self.calls.append(len(texts))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.service.run(kind, options, texts)


@contextmanager
def running(service, **options):
    """The app served on 127.0.0.1 on a free port, in a thread; yields (port, server)."""
    sock = bind_socket("127.0.0.1", 0)
    started = threading.Event()
    server = make_server(create_app(service, ServeOptions(**options)), graceful_timeout_s=10, on_started=started.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert started.wait(30), "the server did not start"
    try:
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive()


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, parsed JSON or text) of one HTTP request; body: an object (sent as JSON) or bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body, ensure_ascii=False).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        content = json.loads(raw) if response.getheader("content-type", "").startswith("application/json") else raw.decode()
        return response.status, response.headers, content  # headers: case-insensitive
    finally:
        connection.close()


def post(port, path, body, **kwargs):
    return request(port, "POST", path, body, **kwargs)


def test_every_endpoint_answers_as_the_cli_does(service, both_heads_dir):
    runner = CliRunner()
    model = ["--model", str(both_heads_dir), "--device", "cpu"]
    with running(service) as (port, _):
        status, _, health = request(port, "GET", "/health")
        assert status == 200 and health["status"] == "ok"
        status, _, info = request(port, "GET", "/info")
        assert info["heads"] == ["mlm", "cls"] and info["labels"] == list(LABELS.values())
        assert info["endpoints"] == ["/embed", "/predict", "/fill-mask"]
        assert (info["precision"], info["device"], info["max_seq_len"]) == ("fp32", "cpu", 128)
        assert info["batching"]["max_batch_size"] == 64

        status, _, predicted = post(port, "/predict", {"texts": TEXTS, "top_k": 2})
        cli = runner.invoke(cli_app, ["predict", *model, "--json", "-k", "2", "--precision", "fp32", *TEXTS])
        assert status == 200 and cli.exit_code == 0, cli.output
        _assert_same_json(predicted, [json.loads(line) for line in cli.stdout.splitlines()])

        status, _, filled = post(port, "/fill-mask", {"texts": MASKED, "top_k": 3})
        cli = runner.invoke(cli_app, ["fill-mask", *model, "--json", "-k", "3", "--precision", "fp32", *MASKED])
        assert status == 200 and cli.exit_code == 0, cli.output
        _assert_same_json(filled, [json.loads(line) for line in cli.stdout.splitlines()])
        status, _, joint = post(port, "/fill-mask", {"texts": MASKED[1:], "top_k": 2, "joint": True})
        cli = runner.invoke(cli_app, ["fill-mask", *model, "--json", "-k", "2", "--joint", "--precision", "fp32", MASKED[1]])
        _assert_same_json(joint, [json.loads(cli.stdout)])

        status, _, embedded = post(port, "/embed", {"texts": TEXTS})
        cli = runner.invoke(cli_app, ["embed", *model, "--precision", "fp32", *TEXTS])
        assert status == 200 and cli.exit_code == 0, cli.output
        _assert_same_json(embedded, [json.loads(line) for line in cli.stdout.splitlines()])
        status, _, pooled = post(port, "/embed", {"texts": TEXTS[:1], "pooling": "cls", "normalize": False})
        expected = service.embedder.embed(TEXTS[:1], "cls", False)[0]
        assert status == 200 and np.allclose(pooled[0]["embedding"], expected, atol=1e-6)

        status, _, docs = request(port, "GET", "/docs")
        assert status == 200 and "POST /embed" in docs  # the built-in page (test_serve_limits: offline)
        status, _, schema = request(port, "GET", "/openapi.json")
        assert {"/embed", "/predict", "/fill-mask", "/health", "/info"} <= set(schema["paths"])


def _assert_same_json(served, cli, tolerance=1e-5):
    """Equal keys, strings and lists; numbers within `tolerance` (batches of other sizes round differently)."""
    if isinstance(served, dict):
        assert set(served) == set(cli)
        for key in served:
            _assert_same_json(served[key], cli[key], tolerance)
    elif isinstance(served, list):
        assert len(served) == len(cli)
        for a, b in zip(served, cli):
            _assert_same_json(a, b, tolerance)
    elif isinstance(served, float):
        assert served == pytest.approx(cli, abs=tolerance)
    else:
        assert served == cli


def test_bad_requests_get_a_json_error(service, encoder_service):
    with running(service, max_texts=4, max_body_bytes=4096) as (port, _):
        cases = [
            (b'{"texts": ["a"', "/embed", 400, "not valid JSON"),
            ({"texts": "今天"}, "/embed", 422, "texts"),
            ({"texts": [1, 2]}, "/predict", 422, "texts.0"),
            ({"texts": ["好"], "top_k": "2"}, "/predict", 422, "top_k"),
            ({"texts": ["好"], "top_k": 0}, "/predict", 422, "top_k"),
            ({"texts": []}, "/embed", 422, "texts"),
            ({"texts": ["好", "  "]}, "/embed", 422, "texts[1]: empty text"),
            ({"texts": ["好"] * 5}, "/embed", 422, "5 texts, more than the 4"),
            ({"texts": ["好"], "pooling": "max"}, "/embed", 422, "pooling"),
            ({"texts": ["好"], "topk": 3}, "/predict", 422, "topk"),
            ({"text": ["好"]}, "/embed", 422, "texts"),
            ({"texts": ["北京是[MASK]国", "没有掩码"]}, "/fill-mask", 422, "texts[1]: no [MASK]"),
            ({"texts": ["好" * 5000]}, "/embed", 413, "over 4,096 bytes"),
        ]
        for body, path, status, message in cases:
            got, _, answer = post(port, path, body)
            assert (got, list(answer)) == (status, ["error"]), (body, answer)
            assert message in answer["error"], (body, answer)
        # A body with no Content-Length (chunked) is cut off when it passes the limit.
        assert _chunked_post(port, "/embed", json.dumps({"texts": ["好" * 5000]}).encode())[0] == 413
        got, _, answer = request(port, "GET", "/nowhere")
        assert got == 404 and "POST /embed" in answer["error"]
        got, _, answer = request(port, "GET", "/embed")
        assert got == 405 and "error" in answer
        got, _, answer = post(port, "/fill-mask", {"texts": ["北" * 300 + "[MASK]"]})  # longer than 128 positions
        assert got == 422 and "more than the model's 128 positions" in answer["error"]
        assert request(port, "GET", "/health")[0] == 200  # nothing above hurt the server
    with running(encoder_service) as (port, _):
        for path, body in (("/predict", {"texts": ["好"]}), ("/fill-mask", {"texts": ["[MASK]"]})):
            got, _, answer = post(port, path, body)
            assert got == 404 and "has no" in answer["error"], answer
        assert post(port, "/embed", {"texts": ["好"]})[0] == 200


def _chunked_post(port: int, path: str, body: bytes) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for start in range(0, len(body), 1024):
                piece = body[start : start + 1024]
                conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        reply = conn.recv(65536).decode(errors="replace")
    return int(reply.split()[1]), reply


def test_concurrent_clients_get_their_own_results_in_batches(service):
    counting = CountingService(service)
    with running(counting, max_wait_ms=30, max_batch_size=16) as (port, _):
        def client(i: int):
            texts = [f"第{i}号客户的第{j}句话：{TEXTS[(i + j) % len(TEXTS)]}" for j in range(1 + i % 3)]
            kind = ("/embed", "/predict", "/fill-mask")[i % 3]
            if kind == "/fill-mask":
                texts = [f"第{i}号客户：北京是[MASK]国的首都。"]
            return kind, texts, post(port, kind, {"texts": texts, "top_k": 2} if kind != "/embed" else {"texts": texts})

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(client, range(48)))
    expected = {}  # each text's own answer, computed alone
    for kind, texts, _ in answers:
        for text in texts:
            expected[kind, text] = service.run(kind[1:], (None, None) if kind == "/embed" else (2,) + (False,) * (kind == "/fill-mask"), [text])[0]
    for kind, texts, (status, _, results) in answers:
        assert status == 200, results
        assert [r["text"] for r in results] == texts  # nobody gets another request's answer
        for text, result in zip(texts, results):
            _assert_same_json(result, expected[kind, text])
    assert len(counting.calls) < len(answers), counting.calls  # requests that arrived together shared model calls
    assert max(counting.calls) <= 16 + 2  # a batch holds whole requests, up to max_batch_size texts


def test_a_failing_text_fails_only_its_own_request(service):
    counting = CountingService(service)
    counting.work = lambda kind, options, texts: 0  # admission would refuse the long text; let the model meet it
    with running(counting, max_wait_ms=200) as (port, _):
        bodies = [{"texts": ["北" * 300 + "[MASK]"]}] + [{"texts": [f"第{i}个：北京是[MASK]国的首都。"]} for i in range(5)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda body: post(port, "/fill-mask", body), bodies))
    assert answers[0][0] == 422 and "positions" in answers[0][2]["error"]
    for body, (status, _, results) in zip(bodies[1:], answers[1:]):
        assert status == 200 and results[0]["text"] == body["texts"][0]
    assert counting.calls[0] == 6  # all six ran as one batch first, then one by one


def test_a_full_queue_answers_503_with_retry_after(service):
    slow = CountingService(service, delay_s=0.6)
    with running(slow, max_queue=4, max_texts=4, max_wait_ms=0) as (port, _):
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, port, "/embed", {"texts": TEXTS})  # runs (slowly)
            _wait_for(lambda: request(port, "GET", "/health")[2]["running_texts"] == 4)
            second = pool.submit(post, port, "/embed", {"texts": TEXTS[::-1]})  # waits: the queue is full
            _wait_for(lambda: request(port, "GET", "/health")[2]["queued_texts"] == 4)
            status, headers, answer = post(port, "/embed", {"texts": ["再来一句"]})
            assert status == 503 and headers["Retry-After"] == "1" and "queue is full" in answer["error"]
            assert first.result()[0] == 200 and second.result()[0] == 200
            assert [r["text"] for r in second.result()[2]] == TEXTS[::-1]


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_shutdown_finishes_requests_in_flight(service):
    slow = CountingService(service, delay_s=0.8)
    with running(slow) as (port, server):
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post, port, "/predict", {"texts": TEXTS})
            _wait_for(lambda: slow.calls)
            server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
            status, _, results = in_flight.result()
        assert status == 200 and [r["text"] for r in results] == TEXTS
        _wait_for(lambda: not _accepts(port))  # no new connections once stopping


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _healthy(port: int) -> bool:
    try:
        return request(port, "GET", "/health", timeout=2)[0] == 200
    except OSError:
        return False


def test_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            bind_socket("127.0.0.1", taken.getsockname()[1])


def test_sbert_serve_exits_0_on_sigterm_after_answering(both_heads_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sbert_cli", "serve", "--model", str(both_heads_dir), "--port", str(port),
         "--device", "cpu", "--max-wait-ms", "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        _wait_for(lambda: process.poll() is None and _healthy(port), timeout=60)  # the socket listens before the model loads
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post, port, "/embed", {"texts": ["关机前的最后一句"]})
            time.sleep(0.5)  # the request waits in the batcher for 1.5 s
            process.send_signal(signal.SIGTERM)
            status, _, results = in_flight.result()
        assert status == 200 and results[0]["text"] == "关机前的最后一句"
        assert process.wait(30) == 0
        stderr = process.stderr.read()
        assert f"on http://127.0.0.1:{port}" in stderr and "stopped" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.05), ("int8", 0.1)])
def test_reduced_precisions_convert_the_weights_once_and_stay_close(both_heads_dir, service, precision, tolerance):
    """serve --precision bf16|int8 (int8: inference only, as eval/predict/fill-mask take it) converts every head
    once at load, as the other inference commands do, and answers close to fp32."""
    import torch

    reduced = ModelService(both_heads_dir, precision=precision, device="cpu")
    assert reduced.info()["precision"] == precision
    if precision == "bf16":  # the weights themselves are bf16: no autocast re-casts them per call
        assert reduced.mlm.mlm_head.dense.weight.dtype == torch.bfloat16
        assert reduced.classifier.model.bert.layers[0].attention.query.weight.dtype == torch.bfloat16
    else:  # dynamic quantization replaced the Linear layers of the encoder and of the MLM head
        assert not isinstance(reduced.mlm.mlm_head.dense, torch.nn.Linear)
        assert not isinstance(reduced.classifier.model.bert.layers[0].attention.query, torch.nn.Linear)
    got, want = (s.run("embed", (None, None), TEXTS) for s in (reduced, service))
    assert np.allclose([r["embedding"] for r in got], [r["embedding"] for r in want], atol=tolerance)
    # A random tiny model's candidates are near ties, so their order may differ: compare the shape of the answers.
    for kind, options, texts in (("predict", (2,), TEXTS), ("fill-mask", (3, False), MASKED)):
        got, want = reduced.run(kind, options, texts), service.run(kind, options, texts)
        assert len(got) == len(want) and all(set(g) == set(w) for g, w in zip(got, want))
