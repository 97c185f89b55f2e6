"""sbert: a from-scratch PyTorch BERT for Chinese NLP that loads Hugging Face checkpoints."""

__version__ = "0.1.0"

__all__ = ["__version__", "embed", "load_model", "load_tokenizer"]


def __getattr__(name):
    # The Python API, imported lazily so `import sbert_cli` (and the CLI's --help) does not pull in torch.
    if name in ("load_model", "load_tokenizer"):
        from sbert_cli.model import model_dir as checkpoint

        return getattr(checkpoint, name)
    if name == "embed":
        from sbert_cli.tasks.embedding import embed

        return embed
    raise AttributeError(f"module 'sbert_cli' has no attribute {name!r}")
