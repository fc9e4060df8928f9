"""`python -m pipeline.store verify DIR`: exit status 1 when the store has problems."""
from __future__ import annotations

import argparse
import sys
from os import PathLike
from typing import Optional, Sequence

from pipeline.store.verify import verify_store


def report_problems(store_dir: str | PathLike[str], *, check_values: bool = True) -> int:
    """Print each problem of the store with its fix (stderr) and a verdict; 1 if there is any problem."""
    problems = verify_store(store_dir, check_values=check_values)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{store_dir}: {len(problems)} problem(s)" if problems else f"{store_dir}: OK")
    return 1 if problems else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.store", description="Feature-store tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="Check every shard against the manifest.")
    verify.add_argument("store_dir", help="Store directory (holds store.json).")
    verify.add_argument("--skip-values", action="store_true", help="Do not read features to look for NaN/Inf (fast).")
    args = parser.parse_args(argv)
    return report_problems(args.store_dir, check_values=not args.skip_values)


if __name__ == "__main__":
    sys.exit(main())
