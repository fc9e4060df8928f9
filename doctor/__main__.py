"""`scan-pipeline doctor WORKSPACE [--json] [--skip-values]` (also `python -m doctor ...`).

Exit status: 0 clean, 1 problems found, 2 not a workspace.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from doctor.checks import diagnose
from pipeline.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scan-pipeline doctor", description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path, help="Workspace folder ($SCAN_WORKSPACE).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument("--skip-values", action="store_true", help="Do not read every feature looking for NaN/Inf.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Also accepts the leading word `doctor`, as the `scan-pipeline doctor` console script passes it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        diagnosis = diagnose(args.workspace, check_values=not args.skip_values)
    except InputError as error:
        print(json.dumps({"error": str(error)}) if args.json else f"error: {error}", file=sys.stderr)
        return 2
    print(diagnosis.to_json() if args.json else diagnosis.to_text())
    return 1 if diagnosis.findings else 0


if __name__ == "__main__":
    sys.exit(main())
