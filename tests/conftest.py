"""Shared fixtures: the embedded MiniLM backbone, its tokenizer, and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# the training fixtures, for every test module (tests/tiny_run.py says which apply where)
from tests.tiny_run import dropout_backbone, one_thread, tiny_setup, token_cache  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PALBERT_DATA_DIR", ROOT.parent / "shared" / "data" / "cs224n"))


def pytest_collection_modifyitems(config, items):
    gpu = torch.cuda.is_available()
    for item in items:
        if "cuda" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
        if "data" in item.keywords and not DATA_DIR.is_dir():
            item.add_marker(
                pytest.mark.skip(reason=f"real data not found at {DATA_DIR} (set PALBERT_DATA_DIR)")
            )


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def tokenizer():
    from palbert.backbones import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture(scope="session")
def pair_batch(tokenizer):
    """Padded sentence pairs of mixed lengths with token_type_ids."""
    a = ["a cat sat on the mat", "the movie was long but", "hi", "what is the capital of france"]
    b = ["a dog sat", "wonderful and moving, i loved every minute of it", "hello there", "paris"]
    return dict(tokenizer(a, b, padding=True, return_tensors="pt"))
