"""``palbert serve``: one encoder answers every task over HTTP, rows of any tasks sharing
each forward pass (the task-aware batcher). docs/serving.md is the user's page.

>>> from palbert.serve import create_app     # doctest: +SKIP
>>> app = create_app(model)                   # an ASGI app; mount it or run it with uvicorn
"""

from palbert.serve.app import ServeConfig, ServeError, create_app
from palbert.serve.batcher import Batcher, BatchLimits, pack

__all__ = ["BatchLimits", "Batcher", "ServeConfig", "ServeError", "create_app", "pack"]
