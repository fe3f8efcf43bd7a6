"""Training: task samplers, the optimizer step, checkpoints, runs, the ``train`` and ``plot``
commands. Nothing task-specific lives here; tasks come from :mod:`palbert.tasks`.

::

    from palbert.recipe import load_recipe
    from palbert.training import train, load_run
    run_dir = train(load_recipe("recipes/quickstart.yaml"))
    model, tasks, recipe = load_run(run_dir)
"""

from palbert.training.samplers import TaskSampler, probabilities


def train(*args, **kwargs):
    """See :func:`palbert.training.run.train`."""
    from palbert.training.run import train as _train

    return _train(*args, **kwargs)


def load_run(*args, **kwargs):
    """See :func:`palbert.training.runfolder.load_run`."""
    from palbert.training.runfolder import load_run as _load_run

    return _load_run(*args, **kwargs)


__all__ = ["TaskSampler", "load_run", "probabilities", "train"]
