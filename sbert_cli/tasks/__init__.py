"""Tasks: each task's training adapter, scoring and inference together (pretrain.py, fill_mask.py, probe.py, classification.py, embedding.py, evaluate.py)."""
