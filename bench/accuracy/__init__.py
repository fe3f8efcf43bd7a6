"""The accuracy table of issue 9 (see run.py)."""
