"""sbert: a from-scratch PyTorch BERT for Chinese NLP that loads Hugging Face checkpoints."""

__version__ = "0.2.0"  # the one place the version is written: pyproject.toml reads it

__all__ = ["__version__", "embed", "load_model", "load_tokenizer", "ner", "load_tagger"]


def __getattr__(name):
    # The Python API, imported lazily so `import sbert_cli` (and the CLI's --help) does not pull in torch.
    if name in ("load_model", "load_tokenizer"):
        from sbert_cli.model import model_dir

        return getattr(model_dir, name)
    if name == "embed":
        from sbert_cli.tasks.embedding import embed

        return embed
    if name in ("ner", "load_tagger"):
        from sbert_cli.tasks import ner_predict

        return getattr(ner_predict, name)
    raise AttributeError(f"module 'sbert_cli' has no attribute {name!r}")
