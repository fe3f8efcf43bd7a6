"""``python -m palbert`` (and ``torchrun -m palbert``) runs the CLI."""

import sys

from palbert.cli import main

sys.exit(main())
