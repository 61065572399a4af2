"""The benchmark is a program (``tests/benchmarks/run.py``), not tests: pytest collects nothing here.

Without this, ``--doctest-modules`` would import every module of the benchmark, some of which
need benchmark-only dependencies (the ``bench`` extra).
"""

collect_ignore_glob = ["*.py"]
