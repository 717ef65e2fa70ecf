"""Hydra configuration (packaged as ``tcbm.conf``)."""
