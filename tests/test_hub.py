"""sbert download and the hub layer, over real HTTP against a fake Hub on 127.0.0.1 (tests/hub_server.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub, FakeRepo

from sbert_cli.errors import DownloadError
from sbert_cli.model import hub

HF_TOKEN = "hf_test_token"
BERT_FILES = {"config.json", "vocab.txt", "tokenizer_config.json", "model.safetensors"}


def _sharded_copy(src: Path, dst: Path) -> Path:
    """src's model.safetensors split into two shards with a model.safetensors.index.json."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(src / name, dst / name)
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
        shard = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(dst / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def _bin_copy(src: Path, dst: Path) -> Path:
    """src with its weights as pytorch_model.bin instead of model.safetensors."""
    from safetensors.torch import load_file

    dst.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(src / name, dst / name)
    torch.save(load_file(str(src / "model.safetensors")), dst / "pytorch_model.bin")
    return dst


@pytest.fixture(scope="module")
def served(hf_mlm_dir, tmp_path_factory):
    """The fake Hub, its repos built from the tiny HF checkpoint; yields (hub, repo_id -> source dir)."""
    root = tmp_path_factory.mktemp("served")
    sources = {
        "org/tiny": hf_mlm_dir,
        "org/tiny-bin": _bin_copy(hf_mlm_dir, root / "bin"),
        "org/tiny-sharded": _sharded_copy(hf_mlm_dir, root / "sharded"),
    }
    # What real repos also carry and a BERT does not need: must never be requested.
    extras = {
        "flax_model.msgpack": b"\0" * 3_000_000,
        "tf_model.h5": b"\0" * 3_000_000,
        "README.md": b"# tiny\n",
        "tokenizer_config.json": b'{"do_lower_case": true}\n',
    }
    repos = {repo_id: FakeRepo.from_dir(path, extra=extras) for repo_id, path in sources.items()}
    repos["org/gated"] = FakeRepo.from_dir(hf_mlm_dir, gated_token=HF_TOKEN)
    repos["org/no-weights"] = FakeRepo(
        {"config.json": (hf_mlm_dir / "config.json").read_bytes(), "vocab.txt": b"[PAD]\n", "tf_model.h5": b"\0" * 10}
    )
    with FakeHub(repos, max_seconds=120) as fake:
        yield fake, sources


def hub_env(endpoint: str, hf_home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a CLI run against `endpoint`, with its own HF cache and short network timeouts."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_CACHE")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="0",  # conftest turns it on for this process; these runs talk to the fake hub
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        HF_HUB_DISABLE_TELEMETRY="1",
        COLUMNS="200",
    )
    env.update(overrides)
    return env


def sbert(*args: str, endpoint: str, hf_home: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m sbert_cli ARGS` in a subprocess (huggingface_hub reads its settings at import)."""
    return subprocess.run(
        [sys.executable, "-m", "sbert_cli", *args],
        env=hub_env(endpoint, hf_home, **env), capture_output=True, text=True, timeout=60,
    )


def assert_one_line_error(result, *needles: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def assert_same_model(downloaded: Path, source: Path) -> None:
    from sbert_cli.model.model_dir import load_for_task

    ours = load_for_task(downloaded, "mlm").checkpoint.state
    expected = load_for_task(source, "mlm").checkpoint.state
    assert ours.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(ours[name], tensor), name


def file_requests(fake: FakeHub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in fake.requests if "/resolve/" in p or p.startswith("/cdn/")]


def test_download_to_out_fetches_only_bert_files_and_loads_identically(served, tmp_path):
    fake, sources = served
    out = tmp_path / "model"
    fake.requests.clear()
    result = sbert("download", "org/tiny", "--out", str(out), endpoint=fake.url, hf_home=tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert fake.fetched() == BERT_FILES  # not flax_model.msgpack, tf_model.h5, README.md
    assert f"next: sbert fill-mask --model {out}" in result.stdout
    assert "model.safetensors" in result.stdout
    for name in BERT_FILES - {"tokenizer_config.json"}:
        assert (out / name).read_bytes() == (sources["org/tiny"] / name).read_bytes()
    assert_same_model(out, sources["org/tiny"])

    fake.requests.clear()
    again = sbert("download", "org/tiny", "--out", str(out), endpoint=fake.url, hf_home=tmp_path / "hf")
    assert again.returncode == 0, again.stderr
    assert file_requests(fake) == []  # same commit already there: nothing fetched again


@pytest.mark.parametrize("repo_id", ["org/tiny-bin", "org/tiny-sharded"])
def test_bin_only_and_sharded_repos_download_and_load(served, tmp_path, repo_id):
    fake, sources = served
    out = tmp_path / "model"
    result = sbert("download", repo_id, "--out", str(out), endpoint=fake.url, hf_home=tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    served_bert_files = {p.name for p in sources[repo_id].iterdir()} | {"tokenizer_config.json"}
    assert {p.name for p in out.iterdir() if p.is_file()} == served_bert_files
    assert_same_model(out, sources["org/tiny"])


def test_download_into_cache_is_found_offline_by_repo_id(served, tmp_path):
    fake, _ = served
    hf_home = tmp_path / "hf"
    result = sbert("download", "org/tiny", endpoint=fake.url, hf_home=hf_home)
    assert result.returncode == 0, result.stderr
    assert "next: sbert fill-mask --model org/tiny " in result.stdout
    snapshots = hf_home / "hub" / "models--org--tiny" / "snapshots"
    (snapshot,) = snapshots.iterdir()

    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: this process may not reach a hub
    fake.requests.clear()
    assert hub.fetch_model("org/tiny", cache_dir=hf_home / "hub") == snapshot
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set and org/tiny-bin is not"):
        hub.fetch_model("org/tiny-bin", cache_dir=hf_home / "hub")
    assert fake.requests == []

    offline_cli = sbert("download", "org/tiny-bin", endpoint=fake.url, hf_home=hf_home, HF_HUB_OFFLINE="1")
    assert_one_line_error(offline_cli, "HF_HUB_OFFLINE")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["org/nope"], ["org/nope", "no such model", "HF_TOKEN"]),
        (["org/tiny", "--revision", "v9"], ["no revision 'v9'"]),
        (["org/no-weights"], ["no PyTorch weights", "tf_model.h5"]),
        (["org/gated"], ["gated", "HF_TOKEN"]),
    ],
)
def test_hub_errors_are_one_line(served, tmp_path, args, needles):
    fake, _ = served
    result = sbert("download", *args, "--out", str(tmp_path / "out"), endpoint=fake.url, hf_home=tmp_path / "hf")
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()  # no half-made folder left behind


def test_gated_repo_downloads_with_hf_token(served, tmp_path):
    fake, sources = served
    out = tmp_path / "model"
    result = sbert("download", "org/gated", "--out", str(out), endpoint=fake.url, hf_home=tmp_path / "hf",
                   HF_TOKEN=HF_TOKEN)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").read_bytes() == (sources["org/tiny"] / "model.safetensors").read_bytes()


def test_connection_refused_suggests_a_mirror(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = sbert("download", "org/tiny", "--endpoint", f"http://127.0.0.1:{port}", endpoint="http://127.0.0.1:9",
                   hf_home=tmp_path / "hf")
    mirror_hint = "HF_ENDPOINT=https://hf-mirror.com"
    assert_one_line_error(result, f"cannot reach http://127.0.0.1:{port}", mirror_hint, "--model DIR")


def test_non_empty_out_is_refused_without_force(served, tmp_path):
    fake, sources = served
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run = lambda *args: sbert("download", *args, "--out", str(out), endpoint=fake.url, hf_home=tmp_path / "hf")

    fake.requests.clear()
    assert_one_line_error(run("org/tiny"), "already holds other files", "--force")
    assert fake.requests == []  # refused before any network

    assert run("org/tiny", "--force").returncode == 0
    assert (out / "notes.txt").read_text() == "mine"

    with pytest.raises(DownloadError, match="already holds a download of org/tiny; .* `force`"):
        hub.download("org/tiny-bin", out_dir=out)
    switched = run("org/tiny-bin", "--force")
    assert switched.returncode == 0, switched.stderr
    assert "removed stale model.safetensors" in switched.stdout
    assert not (out / "model.safetensors").exists()  # it would shadow the new pytorch_model.bin
    assert_same_model(out, sources["org/tiny"])


def test_select_files_prefers_safetensors_and_takes_tokenizer_files():
    listing = ["config.json", "vocab.txt", "pytorch_model.bin", "model.safetensors", "tokenizer.json",
               "special_tokens_map.json", "flax_model.msgpack", "README.md"]
    wanted, weights = hub.select_files("o/m", listing)
    assert weights == "model.safetensors"
    assert wanted == ["config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json", "model.safetensors"]
    assert hub.select_files("o/m", ["config.json", "vocab.txt", "pytorch_model.bin.index.json"])[1] == (
        "pytorch_model.bin.index.json"
    )
    with pytest.raises(DownloadError, match="no config.json"):
        hub.select_files("o/m", ["vocab.txt", "model.safetensors"])
    with pytest.raises(DownloadError, match="no vocab.txt"):
        hub.select_files("o/m", ["config.json", "tokenizer.json", "model.safetensors"])


def test_hub_module_does_not_import_torch():
    # `sbert download` needs no torch; importing it costs seconds.
    code = "import sys, sbert_cli.model.hub; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_missing_files_sees_a_missing_shard(served, tmp_path):
    _, sources = served
    folder = shutil.copytree(sources["org/tiny-sharded"], tmp_path / "m")
    assert hub.missing_files(folder) == []
    (folder / "model-00002-of-00002.safetensors").unlink()
    assert hub.missing_files(folder) == ["model-00002-of-00002.safetensors"]
    assert hub.cached_snapshot("org/never-downloaded", cache_dir=tmp_path / "cache") is None


ST_REPO = "org/st-tiny"
# What sbert fetches from a sentence-transformers repo: the BERT's files, and what says how it pools and normalises.
ST_FILES = BERT_FILES - {"tokenizer_config.json"} | {
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
}


@pytest.fixture(scope="module")
def st_served(tmp_path_factory):
    """A fake Hub serving a bge-style sentence-transformers repo (CLS pooling, then Normalize), laid out as on the hub:
    a tiny BERT at the top, modules.json, 1_Pooling/config.json, no 2_Normalize/ files, and exports sbert must skip."""
    from conftest import TINY_HF_CONFIG, make_hf_checkpoint

    bert = make_hf_checkpoint(tmp_path_factory.mktemp("st") / "bert", "base", seed=2)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {"word_embedding_dimension": TINY_HF_CONFIG["hidden_size"], "pooling_mode_cls_token": True,
               "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    files = {p.name: p.read_bytes() for p in bert.iterdir() if p.is_file()}
    files.update({
        "modules.json": json.dumps(modules).encode(),
        "sentence_bert_config.json": b'{"max_seq_length": 48, "do_lower_case": false}',
        "config_sentence_transformers.json": b'{"__version__": {"sentence_transformers": "2.2.2"}}',
        "1_Pooling/config.json": json.dumps(pooling).encode(),
        "onnx/model.onnx": b"\0" * 100_000,
        "onnx/config.json": files["config.json"],
        "README.md": b"# st-tiny\n",
    })
    with FakeHub({ST_REPO: FakeRepo(files)}, max_seconds=120) as fake:
        yield fake


def test_select_files_takes_a_sentence_transformers_repos_modules():
    listing = ["config.json", "vocab.txt", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md",
               "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
               "2_Dense/config.json", "2_Dense/model.safetensors", "onnx/config.json", "onnx/model.onnx",
               "openvino/openvino_model.xml", "1_Pooling/README.md", "a/1_Pooling/config.json"]
    wanted, weights = hub.select_files("o/m", listing)
    assert weights == "model.safetensors"
    assert wanted == ["config.json", "vocab.txt", "tokenizer.json", "1_Pooling/config.json", "2_Dense/config.json",
                      "sentence_bert_config.json", "config_sentence_transformers.json", "modules.json",
                      "model.safetensors"]  # modules.json after what it names, the weights last
    # No modules.json: module folders and sentence-transformers' other files are not sbert's business.
    assert hub.select_files("o/m", [n for n in listing if n != "modules.json"])[0] == [
        "config.json", "vocab.txt", "tokenizer.json", "model.safetensors"]


def test_sentence_transformers_repo_id_embeds_with_its_pooling(st_served, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sbert_cli.tasks.embedding import load_embedder

    fake = st_served
    out, hf_home = tmp_path / "model", tmp_path / "hf"
    fake.requests.clear()
    result = sbert("download", ST_REPO, "--out", str(out), endpoint=fake.url, hf_home=hf_home)
    assert result.returncode == 0, result.stderr
    assert fake.fetched() == ST_FILES  # not onnx/, README.md
    assert f"next: sbert embed --model {out}" in result.stdout
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert on_disk == ST_FILES
    assert not (out / "onnx").exists()

    fake.requests.clear()
    cached = sbert("download", ST_REPO, endpoint=fake.url, hf_home=hf_home)
    assert cached.returncode == 0, cached.stderr
    assert fake.fetched() == ST_FILES
    assert f"next: sbert embed --model {ST_REPO} " in cached.stdout
    offline = sbert("download", ST_REPO, endpoint=fake.url, hf_home=hf_home, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert "1_Pooling/config.json" in offline.stdout and "modules.json" in offline.stdout

    fake.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    embedder = load_embedder(ST_REPO, device="cpu", precision="fp32")  # found in the cache, offline
    assert fake.requests == []
    assert (embedder.settings.pooling, embedder.settings.normalize, embedder.max_length) == ("cls", True, 48)

    texts = ["今天天气很好，我们去公园散步吧。", "股市", "Hello World！😀 café", "很长的句子" * 30]
    vectors = embedder.embed(texts)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    st = pytest.importorskip("sentence_transformers")
    expected = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True, batch_size=4)
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)  # what sentence-transformers makes of the repo


def test_cache_from_before_modules_json_still_loads_and_download_completes_it(st_served, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sbert_cli.tasks.embedding import load_embedder

    fake = st_served
    hf_home = tmp_path / "hf"
    assert sbert("download", ST_REPO, endpoint=fake.url, hf_home=hf_home).returncode == 0
    (snapshot,) = (hf_home / "hub" / f"models--{ST_REPO.replace('/', '--')}" / "snapshots").iterdir()
    for name in ST_FILES - BERT_FILES:  # what an sbert before 0.2.0 left in the cache: the BERT's files only
        (snapshot / name).resolve().unlink()  # the blob
        (snapshot / name).unlink()  # the snapshot's link to it
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))

    assert hub.missing_files(snapshot) == []
    assert hub.fetch_model(ST_REPO) == snapshot
    old = load_embedder(ST_REPO, device="cpu", precision="fp32")
    assert (old.settings.pooling, old.settings.normalize) == ("mean", True)  # as before: the default pooling

    fake.requests.clear()
    again = sbert("download", ST_REPO, endpoint=fake.url, hf_home=hf_home)
    assert again.returncode == 0, again.stderr
    assert fake.fetched() == ST_FILES - BERT_FILES  # only what was missing
    new = load_embedder(ST_REPO, device="cpu", precision="fp32")
    assert (new.settings.pooling, new.settings.normalize) == ("cls", True)

    # modules.json without the pooling config it names: incomplete, so a repo id downloads it again.
    (snapshot / "1_Pooling" / "config.json").unlink()
    assert hub.missing_files(snapshot) == ["1_Pooling/config.json"]
    assert hub.cached_snapshot(ST_REPO) is None
