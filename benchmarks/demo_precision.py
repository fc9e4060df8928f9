"""The downstream check of reduced-precision extraction: the demo trained on float32 and on bf16 features.

Two workspaces of the same demo, one extracted as usual and one with ``--extractor-amp-dtype bf16``:

    luigi --module workflows TrainSCAN --dataset demo --local-scheduler                       # SCAN_WORKSPACE=A
    luigi --module workflows TrainSCAN --dataset demo --extractor-amp-dtype bf16 --local-scheduler   # =B
    .venv/bin/python benchmarks/demo_precision.py A B

prints, over every image of the two feature stores, the boxes of the float32 run matched one to one at
IoU >= 0.9 by the bf16 run and the matched regions' feature cosine (extractors.quality), then both
workspaces' test recall tables (EvaluateSCAN's results.json) side by side, for every evaluation mode.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extractors.quality import compare_runs  # noqa: E402
from pipeline.store import StoreReader  # noqa: E402


def one(workspace: Path, pattern: str) -> Path:
    found = sorted(workspace.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{workspace}: expected one {pattern}, found {len(found)}")
    return found[0]


def store_agreement(reference: Path, other: Path) -> dict:
    """Boxes matched and feature cosine of ``other``'s store against ``reference``'s, image by image."""
    ref, out = StoreReader(reference), StoreReader(other)
    ids = ref.image_ids
    if sorted(ids) != sorted(out.image_ids):
        raise SystemExit(f"{reference} and {other} hold different images")
    agreement = compare_runs([ref.get(i) for i in ids], [out.get(i) for i in ids])
    return {"images": len(ids), "boxes": agreement.boxes, "matched_pct": round(100 * agreement.matched_fraction, 2),
            "cosine_mean": round(agreement.mean_cosine, 5), "cosine_min": round(agreement.min_cosine, 5),
            "amp_dtype": [reader.info.extractor.get("amp_dtype") or "float32" for reader in (ref, out)]}


def recall_rows(workspace: Path) -> dict:
    results = json.loads(one(workspace, "EvaluateSCAN/demo-*/results.json").read_text())
    return {mode: {direction: [table[direction][k] for k in ("r1", "r5", "r10")] for direction in ("i2t", "t2i")}
            | {"rsum": round(table["rsum"], 1)} for mode, table in results["modes"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float32_workspace", type=Path)
    parser.add_argument("bf16_workspace", type=Path)
    args = parser.parse_args()
    stores = [one(w, "FeatureStore/demo-*/store") for w in (args.float32_workspace, args.bf16_workspace)]
    print(json.dumps({"features": store_agreement(*stores),
                      "float32": recall_rows(args.float32_workspace),
                      "bf16": recall_rows(args.bf16_workspace)}, indent=1))


if __name__ == "__main__":
    main()
