"""The serving bench of issue 20 (``python -m bench.serve``; see bench/serve/run.py)."""
