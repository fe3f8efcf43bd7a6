"""palbert: parameter-efficient multi-task fine-tuning of BERT encoders with PALs."""

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning: on shared CPUs spinning threads slowed
# training 4-6x (set before torch loads; a user's own setting wins).
import os  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
