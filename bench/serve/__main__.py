"""``python -m bench.serve [--quick] [--tasks DIR]`` and ``python -m bench.serve table R.json``."""

from bench.serve.run import main

raise SystemExit(main())
