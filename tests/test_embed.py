"""tasks/embedding.py, tasks/search.py, model/st_dir.py and `sbert embed` / `sbert similar`: parity with sentence-transformers, pooling, streaming, outputs, the cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbert_cli.cli import app
from sbert_cli.errors import ConfigError, ModelLoadError
from sbert_cli.model.model_dir import load_tokenizer
from sbert_cli.resources import CHINESE_VOCAB
from sbert_cli.model.st_dir import read_sentence_transformers_dir
from sbert_cli.tasks.embedding import NpyWriter, embed_stream, load_embedder
from sbert_cli.tasks.search import similar

from conftest import TINY_HF_CONFIG, make_hf_checkpoint

TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "股市",
    "新款网络游戏今日公测，玩家排队等候进入服务器体验全新副本，官方表示将持续更新",
    "Hello World！😀 café [MASK]",
    "中国足球队昨晚3比0战胜对手",
    "a",
    "北京是中国的首都。",
]
runner = CliRunner()


def make_sentence_transformer(path: Path, pooling: str, normalize: bool, seed: int = 0) -> Path:
    """A tiny random sentence-transformers model dir, saved by sentence-transformers itself."""
    import warnings

    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():  # `models` moved in sentence-transformers 6; the old path works in 3 to 6
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import models

    bert = make_hf_checkpoint(path.parent / f"{path.name}-bert", "base", seed=seed)
    word = models.Transformer(str(bert), max_seq_length=48)
    modules = [word, models.Pooling(TINY_HF_CONFIG["hidden_size"], pooling_mode=pooling)]
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(path))
    if not (path / "vocab.txt").is_file():  # recent versions keep tokenizer.json only; hub models ship vocab.txt
        shutil.copyfile(CHINESE_VOCAB, path / "vocab.txt")
    return path


def st_encode(model_dir: Path, texts: list[str], **tokenizer_kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", tokenizer_kwargs=tokenizer_kwargs or None)
    return model.encode(texts, convert_to_numpy=True, batch_size=4)


@pytest.fixture(scope="module")
def st_mean_dir(tmp_path_factory):
    return make_sentence_transformer(tmp_path_factory.mktemp("st") / "mean-normalized", "mean", True)


@pytest.fixture(scope="module")
def st_cls_dir(tmp_path_factory):
    return make_sentence_transformer(tmp_path_factory.mktemp("st") / "cls-raw", "cls", False, seed=1)


@pytest.mark.parametrize("which", ["st_mean_dir", "st_cls_dir"])
def test_vectors_equal_sentence_transformers(which, request):
    model_dir = request.getfixturevalue(which)
    embedder = load_embedder(model_dir, batch_size=3, device="cpu", precision="fp32")
    st = read_sentence_transformers_dir(model_dir)
    assert (embedder.settings.pooling, embedder.settings.normalize) == (st.pooling, st.normalize)
    assert st.pooling == ("mean" if which == "st_mean_dir" else "cls")
    assert embedder.max_length == 48  # the model's max_seq_length, which sentence-transformers truncates to
    texts = TEXTS + ["很长的句子" * 30]  # longer than 48 tokens: truncated the same way
    np.testing.assert_allclose(embedder.embed(texts), st_encode(model_dir, texts), atol=1e-5, rtol=0)


def test_plain_bert_dir_defaults_to_normalised_mean(hf_mlm_dir):
    import sbert_cli

    vectors = sbert_cli.embed(TEXTS, model=hf_mlm_dir, device="cpu", precision="fp32")
    raw = sbert_cli.embed(TEXTS, model=hf_mlm_dir, normalize=False, device="cpu", precision="fp32")
    reference = st_encode(hf_mlm_dir, TEXTS)  # a plain BERT dir gets mean pooling in sentence-transformers too
    np.testing.assert_allclose(raw, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(vectors, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-5, rtol=0)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), TINY_HF_CONFIG["hidden_size"])
    one = sbert_cli.embed(TEXTS[0], model=hf_mlm_dir, device="cpu", precision="fp32")
    np.testing.assert_allclose(one, vectors[0], atol=1e-6)


def test_cls_and_pooler_pooling_match_transformers(hf_cls_dir):
    import torch
    import transformers

    from sbert_cli.model.tokenizer import BertTokenizer

    hf = transformers.BertModel.from_pretrained(str(hf_cls_dir)).eval()
    ids = BertTokenizer.from_vocab(CHINESE_VOCAB).encode(TEXTS)
    embedder = load_embedder(hf_cls_dir, normalize=False, device="cpu", precision="fp32", batch_size=4)
    for pooling in ("cls", "pooler"):
        expected = []
        for seq in ids:
            with torch.no_grad():
                out = hf(torch.tensor([seq]))
            expected.append((out.last_hidden_state[0, 0] if pooling == "cls" else out.pooler_output[0]).numpy())
        np.testing.assert_allclose(embedder.embed(TEXTS, pooling=pooling), np.stack(expected), atol=1e-5, rtol=0)


def test_pooler_refused_without_pooler_weights(hf_mlm_dir):
    # BertForMaskedLM checkpoints carry no pooler: its weights would be random
    with pytest.raises(ModelLoadError, match="no pooler weights"):
        load_embedder(hf_mlm_dir, pooling="pooler", device="cpu")
    embedder = load_embedder(hf_mlm_dir, device="cpu")
    with pytest.raises(ModelLoadError, match="no pooler weights"):
        embedder.embed(["你好"], pooling="pooler")
    with pytest.raises(ConfigError, match="`pooling`"):
        load_embedder(hf_mlm_dir, pooling="max", device="cpu")


def test_sentence_transformers_dirs_we_cannot_follow(st_mean_dir, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(st_mean_dir, legacy)
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
               "pooling_mode_max_tokens": True}
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert read_sentence_transformers_dir(legacy).pooling == "max"
    with pytest.raises(ModelLoadError, match="pooling is 'max'.*`pooling`"):
        load_embedder(legacy, device="cpu")
    assert load_embedder(legacy, pooling="mean", device="cpu").settings.pooling == "mean"  # chosen by the user

    pooling["pooling_mode_max_tokens"], pooling["pooling_mode_mean_tokens"] = False, True
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert read_sentence_transformers_dir(legacy).pooling == "mean"  # sentence-transformers < 6 format

    modules = json.loads((legacy / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (legacy / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=r"not Dense \(3_Dense\)"):
        load_embedder(legacy, device="cpu")


def test_streaming_keeps_input_order_and_bounded_chunks(hf_mlm_dir):
    embedder = load_embedder(hf_mlm_dir, batch_size=2, device="cpu", precision="fp32")
    texts = [f"{i}号文本：" + TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(23)]
    whole = embedder.embed(texts)
    chunks = list(embed_stream(embedder, iter(texts), chunk_size=5))
    assert [len(t) for t, _ in chunks] == [5, 5, 5, 5, 3]
    assert [t for chunk, _ in chunks for t in chunk] == texts
    np.testing.assert_allclose(np.concatenate([v for _, v in chunks]), whole, atol=1e-5)
    one_by_one = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)  # padding and length sorting change nothing


def test_npy_writer_streams_rows_and_rewrites_its_header(tmp_path):
    target = tmp_path / "v.npy"
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    with NpyWriter(target, 3) as writer:
        assert not target.exists()  # written aside, renamed at the end
        writer.write(rows[:3])
        writer.write(rows[3:])
    np.testing.assert_array_equal(np.load(target), rows)
    with NpyWriter(tmp_path / "empty.npy", 3):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, 3)
    with pytest.raises(RuntimeError), NpyWriter(tmp_path / "failed.npy", 3) as writer:
        writer.write(rows)
        raise RuntimeError("interrupted")
    assert not any(p.name.startswith((".failed", "failed")) for p in tmp_path.iterdir())


def test_cli_embed_outputs_agree(hf_mlm_dir, tmp_path):
    expected = load_embedder(hf_mlm_dir, device="cpu", precision="fp32").embed(TEXTS[:3])
    common = ["embed", "--model", str(hf_mlm_dir), "--precision", "fp32", "--device", "cpu"]
    out = tmp_path / "v.npy"
    result = runner.invoke(app, common + ["--out", str(out), *TEXTS[:3]])
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert "3 × 32 float32 (mean pooling, normalised)" in result.stderr

    result = runner.invoke(app, common + ["--out", str(out), "x"])
    assert result.exit_code == 1 and "exists; pass --force" in result.stderr

    result = runner.invoke(app, common, input="\n".join(TEXTS[:3]) + "\n\n")  # stdin, blank line skipped
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == TEXTS[:3]
    np.testing.assert_array_equal(np.array([line["embedding"] for line in lines], dtype=np.float32), vectors)

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    result = runner.invoke(app, common + ["--file", str(corpus), "--format", "tsv"])
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == TEXTS[:3]
    np.testing.assert_array_equal(np.array([row[1:] for row in rows], dtype=np.float32), vectors)

    result = runner.invoke(app, common + ["--out", str(tmp_path / "v.bin"), "x"])
    assert result.exit_code == 1 and "name it .npy, .jsonl or .tsv" in result.stderr


def test_similar_ranks_by_cosine_and_caches_the_corpus(hf_mlm_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    embedder = load_embedder(hf_mlm_dir, device="cpu", precision="fp32", batch_size=3)
    first = similar(TEXTS[4], corpus, embedder, top_k=3)
    assert first.matches[0].text == TEXTS[4] and first.matches[0].index == 4
    assert first.matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert [m.rank for m in first.matches] == [1, 2, 3]
    assert all(a.score >= b.score for a, b in zip(first.matches, first.matches[1:]))
    vectors = embedder.embed(TEXTS)
    cosine = vectors @ vectors[4] / np.linalg.norm(vectors, axis=1) / np.linalg.norm(vectors[4])
    assert [m.index for m in first.matches] == list(np.argsort(-cosine)[:3])
    assert first.cache.is_file() and not first.cache_hit and first.cache.parent == tmp_path
    np.testing.assert_allclose(np.load(first.cache), vectors, atol=1e-6)

    again = similar(TEXTS[4], corpus, embedder, top_k=3)
    assert again.cache == first.cache and again.cache_hit and again.matches == first.matches
    other_settings = load_embedder(hf_mlm_dir, pooling="cls", device="cpu", precision="fp32")
    assert similar(TEXTS[4], corpus, other_settings).cache != first.cache
    corpus.write_text("\n".join(TEXTS[::-1]) + "\n", encoding="utf-8")  # new content: new key, no stale vectors
    changed = similar(TEXTS[4], corpus, embedder, top_k=1)
    assert not changed.cache_hit and changed.matches[0].index == len(TEXTS) - 1 - 4

    result = runner.invoke(app, ["similar", TEXTS[0], "--model", str(hf_mlm_dir), "--file", str(corpus), "-k", "2",
                                 "--json", "--device", "cpu", "--precision", "fp32", "--no-cache"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2] and lines[0]["text"] == TEXTS[0]
    assert set(lines[0]) == {"rank", "index", "score", "text"}


@pytest.mark.skipif(not os.environ.get("SBERT_REAL_BERT"), reason="set SBERT_REAL_BERT=DIR (a real checkpoint, e.g. "
                    "m3e-small from /work/shared/tools/fetch-real-chinese-bert DIR) to compare with sentence-transformers on it")
def test_real_checkpoint_matches_sentence_transformers():
    model_dir = Path(os.environ["SBERT_REAL_BERT"])
    texts = TEXTS + ["在这个快速发展的时代，人工智能正在改变我们的生活方式和工作方式。" * 4]
    embedder = load_embedder(model_dir, normalize=False, device="cpu", precision="fp32", batch_size=4)
    # m3e-small's tokenizer_config.json says do_lower_case false over a vocab without capitals, which sbert
    # lower-cases (BertTokenizer.from_model_dir); sentence-transformers is told the same, or "Hello" is [UNK].
    lower = load_tokenizer(model_dir).do_lower_case
    np.testing.assert_allclose(embedder.embed(texts), st_encode(model_dir, texts, do_lower_case=lower), atol=1e-5, rtol=0)
    uncased = [t for t in texts if t == t.lower()]
    np.testing.assert_allclose(embedder.embed(uncased), st_encode(model_dir, uncased), atol=1e-5, rtol=0)
