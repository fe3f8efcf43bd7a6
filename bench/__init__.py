"""palbert's benchmarks, run from the repository root as modules: ``python -m bench.bench_pal``,
``python -m bench.accuracy.run all`` (docs/benchmarks.md lists them and their results)."""
