"""What the training tests share: a tiny local backbone, tiny CS224N-format files, a recipe
writer and the fixtures built from them (loaded for every test module by conftest.py's
``pytest_plugins``; ``one_thread`` and ``token_cache`` apply where a module names them in
``pytestmark = pytest.mark.usefixtures(...)``).

The backbone is a randomly initialised 2-layer BERT with hidden size 32 saved as a local
folder with its own small vocabulary, so recipes load it by path like any real one.
``four_tasks`` is the mixed-batch and serving tests' model: the four built-in tasks on the
embedded MiniLM, with ``SENT`` and ``PAIRS`` as their inputs.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

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
    # vocab=, not vocab_file=: transformers 5 ignores vocab_file and builds a tokenizer of the
    # five special tokens only, which maps every word to [UNK]
    tokenizer = BertTokenizerFast(vocab=str(root / "vocab.txt"), do_lower_case=True)
    assert len(tokenizer) == len(vocab), "the tiny tokenizer lost its vocabulary"
    tokenizer.save_pretrained(root)
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
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_backbone(root / "backbone"), make_data(root / "data")


@pytest.fixture(scope="module")
def one_thread():
    # tiny models run faster on one thread, and far faster when other jobs share the cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dropout_backbone(tmp_path_factory):
    return make_backbone(tmp_path_factory.mktemp("drop") / "backbone", dropout=0.1)


@pytest.fixture
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PALBERT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tokens"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line_error(err: str, command: str = "train") -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"palbert {command}: error: "), err
    return lines[0]


class CLSHead(nn.Module):
    """A head on the [CLS] vector: the smallest head the model tests need."""

    encoding = "single"
    needs_hidden_states = False

    def __init__(self, hidden: int, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, n)

    def forward(self, features):
        return self.linear(features[0].last_hidden_state[:, 0])


def interrupted_run(tmp: Path, backbone: Path, data: Path) -> tuple[Path, Path]:
    """(recipe, run folder) of a tiny run stopped as if killed right after step 2's
    checkpoint, under ``tmp/runs``."""
    from palbert.recipe import load_recipe
    from palbert.training.run import TrainingInterrupted, train

    path = write_recipe(tmp, backbone, data, train={"save_every": 2})
    with pytest.raises(TrainingInterrupted):
        train(load_recipe(path), progress=False, stop_at_step=2)
    (run,) = (tmp / "runs").iterdir()
    return path, run


def run_fresh(code: str) -> str:
    """Run python code in a new interpreter (nothing shared with this process)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


# -- four built-in tasks on the embedded MiniLM (mixed batches, serving) ------------------

SENT = ["a gripping, funny film", "dull.", "the plot goes nowhere but the cast is great"]
PAIRS = [
    ("a man plays the guitar", "a man is playing a guitar"),
    ("how do i learn python?", "what is the best way to learn python quickly"),
    ("the cat sleeps", "stocks fell"),
]
TASKS = {
    "sst": {"name": "sst"},
    "cfimdb": {"name": "cfimdb"},
    "quora": {"name": "quora"},  # cross-encoded
    "sts": {"name": "sts", "encoding": "bi"},
}


def four_tasks(impl: str, seed: int = 0):
    """SST, CFIMDB, Quora (cross-encoded) and STS (bi-encoded) on the embedded MiniLM with
    random PAL weights (``init="normal"``, so every task computes something of its own)."""
    from palbert import ModuleConfig, PalBert
    from palbert.tasks import build_task

    torch.manual_seed(seed)
    model = PalBert.from_pretrained("minilm", impl=impl, module=ModuleConfig(init="normal"))
    for name, d in TASKS.items():
        task = build_task(d)
        model.add_task(name, task.build_head(model.hidden_size), spec=task)
    return model.eval()
