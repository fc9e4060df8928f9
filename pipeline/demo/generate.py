"""Write the demo dataset: PNG images, Karpathy-style captions JSON, ground-truth boxes.

Layout of `out_dir` (built in a temporary sibling and renamed into place, so a crash never
leaves half a dataset):
    images/<image_id>.png    image_id = zero-padded imgid, e.g. 00012
    dataset_demo.json        Karpathy's schema plus per-image "objects"
    boxes.json               {image_id: [[x1, y1, x2, y2], ...]} in the order of "objects"
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.demo.captions import tokenize, write_captions
from pipeline.demo.config import DemoConfig
from pipeline.demo.render import background, compose
from pipeline.demo.scene import Description, Scene, layout, sample_description

IMAGES_DIR = "images"
CAPTIONS_FILE = "dataset_demo.json"
BOXES_FILE = "boxes.json"
ATTEMPTS_PER_IMAGE = 2000
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # each split its own random stream


def _unique_scene(rng: np.random.Generator, config: DemoConfig, taken: set[Description], split: str) -> Scene:
    """A scene whose description no earlier image of the split has (rejection sampling)."""
    for _ in range(ATTEMPTS_PER_IMAGE):
        description = sample_description(rng, config.object_count_weights)
        if description in taken:
            continue
        scene = layout(rng, description, config.image_size, config.min_visible_fraction)
        if scene is not None:
            taken.add(description)
            return scene
    raise ValueError(f"split {split!r}: no unused object description left after {ATTEMPTS_PER_IMAGE} draws "
                     f"({len(taken)} images so far); ask for fewer images or allow more objects per image")


def _render(rng: np.random.Generator, scene: Scene, config: DemoConfig) -> np.ndarray:
    """Image `(H, W, 3)` uint8: background, objects back to front, pixel noise."""
    size = config.image_size
    canvas = background(rng, size)
    layers = [(cover, np.asarray(obj.rgb, dtype=np.float32)) for obj, cover in zip(scene.objects, scene.coverages)]
    noise = rng.normal(0.0, config.noise_std, (size, size, 3)).astype(np.float32)
    return compose(canvas, layers, noise)


def _entry(imgid: int, split: str, scene: Scene, captions: list[str]) -> dict:
    sentids = [imgid * len(captions) + k for k in range(len(captions))]
    return {
        "filepath": IMAGES_DIR, "filename": f"{imgid:05d}.png", "imgid": imgid, "split": split,
        "sentids": sentids,
        "sentences": [{"raw": raw, "tokens": tokenize(raw), "imgid": imgid, "sentid": sentid}
                      for raw, sentid in zip(captions, sentids)],
        "objects": [{"shape": o.shape, "color": o.color, "size": o.size, "box": list(o.box)} for o in scene.objects],
    }


def _write_split(root: Path, split: str, first_id: int, config: DemoConfig) -> list[dict]:
    rng = np.random.default_rng([config.seed, SPLIT_STREAMS[split]])
    taken: set[Description] = set()
    entries = []
    for imgid in range(first_id, first_id + config.split_sizes[split]):
        scene = _unique_scene(rng, config, taken, split)
        captions = write_captions(rng, scene.objects, config.captions_per_image, config.image_size)
        # Fixed PNG options and no metadata chunks: the same seed gives byte-identical files.
        Image.fromarray(_render(rng, scene, config)).save(
            root / IMAGES_DIR / f"{imgid:05d}.png", format="PNG", compress_level=1, optimize=False)
        entries.append(_entry(imgid, split, scene, captions))
    return entries


def _dump_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")


def _build(root: Path, config: DemoConfig) -> None:
    (root / IMAGES_DIR).mkdir()
    entries: list[dict] = []
    for split in SPLIT_STREAMS:
        entries += _write_split(root, split, len(entries), config)
    _dump_json(root / CAPTIONS_FILE, {"images": entries, "dataset": "demo"})
    _dump_json(root / BOXES_FILE, {Path(e["filename"]).stem: [o["box"] for o in e["objects"]] for e in entries})


def _swap_into_place(built: Path, out_dir: Path) -> None:
    """Rename `built` to `out_dir`; an older `out_dir` is moved aside first and removed after."""
    if not out_dir.exists():
        os.rename(built, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.rename(out_dir, old / out_dir.name)
    os.rename(built, out_dir)
    shutil.rmtree(old)


def generate_demo(out_dir: Path, config: DemoConfig) -> Path:
    """Generate the demo dataset into `out_dir` (replacing it whole) and return `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        building.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        _build(building, config)
        _swap_into_place(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir
