"""Training: one loop (loop.py), its saved state (state.py), and torchrun/signals (distributed.py)."""
