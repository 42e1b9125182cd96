"""Side by side: the same jobs run by wasm-pipeline, DuckDB, polars, pyarrow and Python scripts.

    python benchmarks/compare.py --size 1GB --repeat 3     # the same as: pipeline bench ...

A thin script over :mod:`pipeline.bench` (``pipeline bench -h`` lists the options); it writes
``benchmarks/RESULTS.md``.
"""

import sys

from pipeline.cli import cli

if __name__ == "__main__":
    cli.main(["bench", *sys.argv[1:]], prog_name="compare.py")
