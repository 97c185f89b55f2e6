"""Tasks: each task's training adapter, scoring and inference together (mlm.py, classification.py)."""
