"""`sbert serve` under load: dynamic batching against one request per model call (--max-batch-size 1).

A random classifier of each shape (the `tiny` preset, and BERT-base: 768 hidden, 12 layers) is saved as an
sbert model dir and served by a real `sbert serve` process on 127.0.0.1 (torch's default threads unless
--threads; the load generator runs in this process beside it, on the same cores). N concurrent clients (asyncio, one
keep-alive connection each) send one-text requests (THUCNews titles) back to back, each checking that
its answer is for its own text. After a warm-up, the requests that complete inside the measured window
count: requests/s, and their latency from sending to the last byte. Then the clients are cancelled, so
every run is bounded in time (and in request count), and the server is stopped with SIGTERM. The two
server configurations run side by side, one after the other, per model and client count. For reference,
the model alone (no HTTP) is timed on 32 texts as one batch against one by one: the most batching can
gain for that model on that machine.

    python benchmarks/bench_serve.py                     # tiny and base, 32 and 128 clients (about 6 minutes)
    python benchmarks/bench_serve.py --models tiny --seconds 5 --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REQUEST_TIMEOUT_S = 60.0
MAX_REQUESTS_PER_RUN = 50_000


def build_model_dir(out: Path, shape: str, seed: int = 0) -> Path:
    """A random sbert classifier (10 THUCNews labels) of the preset `shape`, with the Chinese vocab."""
    import torch

    from sbert_cli.model.bert import build_model
    from sbert_cli.model.config import preset
    from sbert_cli.model.model_dir import save_model_dir
    from sbert_cli.model.tokenizer import BertTokenizer
    from sbert_cli.resources import CHINESE_VOCAB, THUCNEWS_CLASSES

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_vocab(CHINESE_VOCAB)
    labels = THUCNEWS_CLASSES.read_text(encoding="utf-8").split()
    model = build_model(preset(shape, vocab_size=len(tokenizer)).with_labels(labels), "cls").eval()
    return save_model_dir(model, out, tokenizer, "cls", source=f"random {shape} for bench_serve")


def titles(count: int) -> list[str]:
    from sbert_cli.resources import THUCNEWS_TRAIN

    return [line.split("\t")[0] for line in THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines()[:count]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sbert serve` in a child process, stopped with SIGTERM (and checked to exit 0)."""

    def __init__(self, model_dir: Path, max_batch_size: int, precision: str, threads: int | None):
        self.port = free_port()
        command = [sys.executable, "-m", "sbert_cli", "serve", "--model", str(model_dir), "--port", str(self.port),
                   "--max-batch-size", str(max_batch_size), "--precision", precision, "--device", "cpu",
                   "--max-queue", "4096"]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/info", timeout=2) as response:
                    self.info = json.load(response)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sbert serve did not start: {self.process.stderr.read()}")
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code != 0:
            print(f"warning: sbert serve exited {code}: {self.process.stderr.read()[-500:]}", file=sys.stderr)


async def client(port: int, path: str, texts: list[str], offset: int, window: tuple[float, float],
                 latencies: list[float], errors: list[str], budget: list[int]) -> None:
    """Sends one-text requests back to back until the window ends (or it is cancelled); records those
    that complete inside `window`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        # The clock is checked too: a cancellation that lands as an answer arrives can be lost in wait_for.
        while budget[0] > 0 and time.perf_counter() < window[1]:
            budget[0] -= 1
            text = texts[i % len(texts)]
            i += 1
            body = json.dumps({"texts": [text]}, ensure_ascii=False).encode()
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            start = time.perf_counter()
            writer.write(head.encode() + body)
            status, payload = await asyncio.wait_for(_response(reader), REQUEST_TIMEOUT_S)
            end = time.perf_counter()
            if status != 200 or json.dumps(text, ensure_ascii=False).encode() not in payload:
                errors.append(f"{status}: {payload[:200]!r}")  # an error, or another request's answer
                return
            if window[0] <= end <= window[1]:
                latencies.append(end - start)
    except asyncio.TimeoutError:
        errors.append(f"no answer within {REQUEST_TIMEOUT_S:g} s")
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


def load(port: int, path: str, clients: int, texts: list[str], warmup_s: float, seconds: float) -> dict:
    """`clients` closed-loop clients for warmup_s + seconds, then cancelled: requests/s and latency of the
    requests that completed in the measured window (those still waiting at its end are not counted)."""

    async def run() -> dict:
        start = time.perf_counter()
        window = (start + warmup_s, start + warmup_s + seconds)
        latencies, errors, budget = [], [], [MAX_REQUESTS_PER_RUN]
        tasks = [asyncio.create_task(client(port, path, texts, k * 997, window, latencies, errors, budget))
                 for k in range(clients)]
        await asyncio.sleep(warmup_s + seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise RuntimeError(f"{len(errors)} failed request(s), e.g. {errors[0]}")
        if budget[0] <= 0:
            raise RuntimeError(f"stopped at {MAX_REQUESTS_PER_RUN:,} requests before the window ended ({len(latencies)} measured); lower --seconds")
        ms = np.asarray(latencies or [float("nan")]) * 1000
        return {"requests": len(latencies), "rps": len(latencies) / seconds,
                "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}

    return asyncio.run(run())


def model_ceiling(model_dir: Path, texts: list[str], batch: int, repeats: int = 3) -> float:
    """Texts/s of the classifier alone on `batch` texts run as one batch, over texts/s run one by one (same
    threads as the server, no HTTP): the most that batching can gain for this model on this machine."""
    from sbert_cli.tasks.cls_predict import load_classifier

    classifier = load_classifier(model_dir, batch_size=batch, precision="fp32", device="cpu")
    sample = texts[:batch]
    classifier.probabilities(sample)  # warm-up
    single, batched = [], []
    for _ in range(repeats):  # alternated, so both see the same machine
        start = time.perf_counter()
        for text in sample:
            classifier.probabilities([text])
        single.append(time.perf_counter() - start)
        start = time.perf_counter()
        classifier.probabilities(sample)
        batched.append(time.perf_counter() - start)
    return float(np.median(single) / np.median(batched))


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, {'native bf16: ' + ', '.join(native) if native else 'no avx512_bf16/amx'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=["tiny", "small", "base"])
    parser.add_argument("--clients", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--base-seconds", type=float, default=40.0,
                        help="measured window for base (a batch of 64 BERT-base texts takes seconds on a small CPU)")
    parser.add_argument("--base-warmup", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="the server's torch threads (OMP_NUM_THREADS; default: torch's, one per core)")
    parser.add_argument("--endpoint", default="/predict", choices=["/predict", "/embed"])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batched-size", type=int, default=64, help="--max-batch-size of the batching server")
    parser.add_argument("--quick", action="store_true", help="tiny, 4 clients, 0.2 + 0.5 s per run: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.models, args.clients, args.warmup, args.seconds = ["tiny"], [4], 0.2, 0.5

    import torch

    texts = titles(4000)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; server: {args.threads or torch.get_num_threads()} torch thread(s), "
          f"precision {args.precision}; endpoint {args.endpoint}; one text per request; "
          f"warm-up + measured window per run: {args.warmup:g} + {args.seconds:g} s (base: {args.base_warmup:g} + "
          f"{args.base_seconds:g} s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for shape in args.models:
            model_dir = build_model_dir(Path(tmp) / shape, shape)
            warmup, seconds = (args.base_warmup, args.base_seconds) if shape == "base" else (args.warmup, args.seconds)
            ceiling = model_ceiling(model_dir, texts, 32)
            print(f"{shape:5} the model alone: 32 texts as one batch are {ceiling:.1f}x as fast as one by one", flush=True)
            for clients in args.clients:
                result = {}
                for max_batch in (args.batched_size, 1):
                    server = Server(model_dir, max_batch, args.precision, args.threads)
                    try:
                        result[max_batch] = load(server.port, args.endpoint, clients, texts, warmup, seconds)
                    finally:
                        server.stop()
                    r = result[max_batch]
                    print(f"{shape:5} {clients:4} clients  max-batch-size {max_batch:3}: {r['requests']:6,} requests "
                          f"{r['rps']:8.1f} req/s  p50 {r['p50']:8.1f} ms  p99 {r['p99']:8.1f} ms", flush=True)
                rows.append((shape, clients, result[args.batched_size], result[1], ceiling))

    print(f"\n| model | clients | dynamic batching (--max-batch-size {args.batched_size}): req/s · p50 · p99 "
          "| --max-batch-size 1: req/s · p50 · p99 | throughput | model alone, batch of 32 vs 1 |")
    print("|---|---:|---|---|---:|---:|")
    for shape, clients, batched, single, ceiling in rows:
        print(f"| {shape} | {clients} | {batched['rps']:,.0f} · {batched['p50']:,.0f} ms · {batched['p99']:,.0f} ms "
              f"| {single['rps']:,.0f} · {single['p50']:,.0f} ms · {single['p99']:,.0f} ms "
              f"| **{batched['rps'] / single['rps']:.1f}×** | {ceiling:.1f}× |")


if __name__ == "__main__":
    main()
