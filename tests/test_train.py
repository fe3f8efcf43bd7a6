"""Training end to end on a tiny local backbone and tiny CS224N-format files.

The backbone is a randomly initialised 2-layer BERT with hidden size 32 saved as a local
folder with its own small vocabulary, so recipes load it by path like any real one.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml

WORDS = (
    "the a movie film plot acting was is very not really good great fun moving bad awful "
    "boring dull what how why who where when cat dog sat on mat capital of france paris city "
    "question answer same different"
).split()
POSITIVE = {"good", "great", "fun", "moving"}


def make_backbone(root: Path, dropout: float = 0.0) -> Path:
    """A tiny BERT folder (config, safetensors weights, vocabulary) under ``root``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(root)
    BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True).save_pretrained(root)
    return root


def _sentence(rng: random.Random, positive: bool) -> str:
    words = rng.choices(WORDS[:10], k=3) + [
        rng.choice(sorted(POSITIVE if positive else {"bad", "awful", "boring", "dull"}))
    ]
    rng.shuffle(words)
    return " ".join(words)


def make_data(root: Path, n_train: int = 40, n_dev: int = 12, seed: int = 0) -> Path:
    """sst and sts files in the CS224N format (tab-separated, unnamed index column)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["\tid\tsentence\tsentiment"]
        for i in range(n):
            pos = rng.random() < 0.5
            lines.append(
                f"{i}\tsst{split}{i}\t{_sentence(rng, pos)}\t{rng.choice([3, 4]) if pos else rng.choice([0, 1])}"
            )
        (root / f"ids-sst-{split}.csv").write_text("\n".join(lines) + "\n")
        lines = ["\tid\tsentence1\tsentence2\tsimilarity"]
        for i in range(n):
            a = _sentence(rng, True)
            same = rng.random() < 0.5
            b = a if same else _sentence(rng, False)
            lines.append(f"{i}\tsts{split}{i}\t{a}\t{b}\t{4.5 if same else 1.0}")
        (root / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_recipe(tmp: Path, backbone: Path, data: Path, **sections) -> Path:
    recipe = {
        "name": "tiny",
        "backbone": {"name": str(backbone)},
        "module": {"kind": "pal", "init": "normal"},
        "tasks": ["sst", "sts"],
        "train": {
            "mode": "full",
            "max_steps": 6,
            "epochs": None,
            "batch_size": 4,
            "max_length": 16,
            "precision": "fp32",
            "log_every": 1,
        },
        "sampler": {"kind": "round_robin"},
        "optimizer": {"lr": 1e-3, "task_lr": 1e-2},
        "schedule": {"warmup_steps": 2, "decay": "linear"},
        "eval": {"every": 3},
        "output_dir": str(tmp / "runs"),
        "data_dir": str(data),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_backbone(root / "backbone"), make_data(root / "data")
