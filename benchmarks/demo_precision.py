"""The downstream check of reduced-precision extraction: the demo trained on float32 and on bf16 or int8 features.

Two workspaces of the same demo, one extracted as usual and one in reduced precision:

    luigi --module workflows TrainSCAN --dataset demo --local-scheduler                       # SCAN_WORKSPACE=A
    luigi --module workflows TrainSCAN --dataset demo --extractor-amp-dtype bf16 --local-scheduler   # =B
    #   or: ... --extractor-runtime onnxruntime --extractor-int8-calibration DIR   (res5 in int8)
    .venv/bin/python benchmarks/demo_precision.py A B

prints, over every image of the two feature stores, the boxes of the reference run matched one to one at
IoU >= 0.9 by the other run and the matched regions' feature cosine (extractors.quality), then both
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
            "precision": [precision(reader.info.extractor) for reader in (ref, out)]}


def precision(extractor: dict) -> str:
    """How a store's features were computed: float32, bf16 / fp16 autocast, or res5 in int8."""
    if extractor.get("int8_calibration_sha256"):
        return "int8 res5"
    return extractor.get("amp_dtype") or "float32"


def recall_rows(workspace: Path) -> dict:
    results = json.loads(one(workspace, "EvaluateSCAN/demo-*/results.json").read_text())
    return {mode: {direction: [table[direction][k] for k in ("r1", "r5", "r10")] for direction in ("i2t", "t2i")}
            | {"rsum": round(table["rsum"], 1)} for mode, table in results["modes"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference_workspace", type=Path, help="the demo extracted in float32")
    parser.add_argument("other_workspace", type=Path, help="the same demo extracted in bf16 or int8")
    args = parser.parse_args()
    workspaces = (args.reference_workspace, args.other_workspace)
    features = store_agreement(*(one(w, "FeatureStore/demo-*/store") for w in workspaces))
    print(json.dumps({"features": features} | {f"{role} ({name})": recall_rows(workspace) for role, name, workspace
                                                 in zip(("reference", "other"), features["precision"], workspaces)},
                     indent=1))


if __name__ == "__main__":
    main()
