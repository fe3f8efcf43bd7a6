"""palbert: parameter-efficient multi-task fine-tuning of BERT encoders with PALs."""

__version__ = "0.1.0"

from palbert.backbones import Backbone, BackboneError, load_backbone, load_tokenizer  # noqa: E402
from palbert.layers import ModuleConfig, Progressive  # noqa: E402
from palbert.model import Encoded, PalBert, format_report  # noqa: E402

__all__ = [
    "Backbone",
    "BackboneError",
    "Encoded",
    "ModuleConfig",
    "PalBert",
    "Progressive",
    "__version__",
    "format_report",
    "load_backbone",
    "load_tokenizer",
]
