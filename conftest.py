"""Root pytest configuration: notebooks run in their fast mode under pytest."""

import os

os.environ.setdefault("MINISVD_FAST", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
