"""Files shipped inside the package (see resources/README.md for their sources)."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
CHINESE_VOCAB = RESOURCES / "chinese-bert-vocab.txt"
THUCNEWS_TRAIN = RESOURCES / "thucnews-train.txt"
THUCNEWS_DEV = RESOURCES / "thucnews-dev.txt"
THUCNEWS_CLASSES = RESOURCES / "thucnews-class.txt"
NER_SAMPLE_TRAIN = RESOURCES / "ner-sample-train.txt"  # synthetic BMES sentences (NOTICE-ner.md)
NER_SAMPLE_DEV = RESOURCES / "ner-sample-dev.txt"
