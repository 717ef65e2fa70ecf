"""Hydra configuration of `tcbm backmap` (kept apart so that `model=` is a plain key, not the model group)."""
