"""Training: the shared torch-free types (types.py: TrainConfig, Task, Callbacks, TrainResult), one loop (loop.py), its saved state (state.py), and torchrun/signals (distributed.py)."""
