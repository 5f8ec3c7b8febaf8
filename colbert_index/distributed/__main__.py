"""``python -m colbert_index.distributed plan --passages 1e7 1e8 1e9 --dim 48 64 128 --node-memory 64G``"""

from __future__ import annotations

import argparse
import sys

from colbert_index.distributed.planner import add_plan_arguments, run_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colbert_index.distributed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_plan_arguments(sub.add_parser("plan", help="index size, shard count and memory per node"))
    args = parser.parse_args(argv)
    print(run_plan(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
