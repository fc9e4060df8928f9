"""The demo dataset: deterministic, well-formed, captions true to the pixels, well posed."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.demo import BOXES_FILE, CAPTIONS_FILE, IMAGES_DIR, DemoConfig, generate_demo
from pipeline.demo.scene import layout, sample_description

SIZE = 96
SMALL = DemoConfig(seed=3, train_images=150, val_images=10, test_images=40, image_size=SIZE)

# The caption language, written out independently of the generator: word -> meaning.
COLORS = {"red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "cyan": "cyan",
          "turquoise": "cyan", "blue": "blue", "purple": "purple", "violet": "purple", "white": "white"}
SHAPES = {"circle": "circle", "disk": "circle", "square": "square", "box": "square", "triangle": "triangle",
          "star": "star", "cross": "cross", "plus": "cross", "diamond": "diamond", "rhombus": "diamond"}
SIZES = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
RELATIONS = {"left": "left", "right": "right", "above": "above", "over": "above",
             "below": "below", "under": "below", "beneath": "below"}
COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4}
FILLER = {"a", "an", "and", "with", "there", "is", "are", "shapes", "objects", "picture", "image", "of",
          "showing", "alone", "to", "the", "as", "well"}
# Rough reference colours for telling object pixels from the muted backgrounds.
REFERENCE_RGB = {"red": (255, 0, 0), "orange": (255, 140, 0), "yellow": (255, 230, 0), "green": (0, 170, 0),
                 "cyan": (0, 210, 210), "blue": (0, 60, 230), "purple": (150, 40, 200), "white": (230, 230, 230)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = generate_demo(tmp_path_factory.mktemp("demo") / "demo", SMALL)
    return root, json.loads((root / CAPTIONS_FILE).read_text())


def parse(tokens: list[str]) -> tuple[list[dict], list[tuple[int, str, int]], list[int]]:
    """Mentions [{color, shape, size?}], relations (mention i, relation, mention j), count words."""
    mentions, relations, counts, pending = [], [], [], None
    i = 0
    while i < len(tokens):
        word = tokens[i]
        size = SIZES.get(word)
        at = i + (size is not None)
        if at + 1 < len(tokens) and tokens[at] in COLORS and tokens[at + 1] in SHAPES:
            if pending is not None:
                relations.append((len(mentions) - 1, pending, len(mentions)))
                pending = None
            mentions.append({"color": COLORS[tokens[at]], "shape": SHAPES[tokens[at + 1]], "size": size})
            i = at + 2
            continue
        if word in RELATIONS:
            pending = RELATIONS[word]
        elif word in COUNTS:
            counts.append(COUNTS[word])
        else:
            assert word in FILLER, f"unexpected word {word!r} in {' '.join(tokens)}"
        i += 1
    return mentions, relations, counts


def centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def description(objects: list[dict]) -> tuple:
    return tuple(sorted((o["color"], o["shape"]) for o in objects))


def color_mask(image: np.ndarray, color: str) -> np.ndarray:
    """Pixels `(H, W)` whose nearest reference colour is `color`, and close to it."""
    names = list(REFERENCE_RGB)
    refs = np.array([REFERENCE_RGB[n] for n in names], dtype=float)
    distance = np.linalg.norm(image[..., None, :].astype(float) - refs, axis=-1)
    return (distance.argmin(-1) == names.index(color)) & (distance.min(-1) < 90)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    config = DemoConfig(seed=7, train_images=6, val_images=2, test_images=3, image_size=64)
    first = tree_bytes(generate_demo(tmp_path / "a", config))
    second = tree_bytes(generate_demo(tmp_path / "b", config))
    other = tree_bytes(generate_demo(tmp_path / "c", dataclasses.replace(config, seed=8)))
    assert first == second
    assert len(first) == 11 + 2
    assert first[CAPTIONS_FILE] != other[CAPTIONS_FILE] and first["images/00000.png"] != other["images/00000.png"]


def test_layout_and_karpathy_schema(demo: tuple[Path, dict]) -> None:
    root, data = demo
    assert data["dataset"] == "demo"
    images = data["images"]
    assert Counter(e["split"] for e in images) == {"train": 150, "val": 10, "test": 40}
    assert [e["imgid"] for e in images] == list(range(200))
    sentids = [s["sentid"] for e in images for s in e["sentences"]]
    assert sorted(sentids) == list(range(1000))
    boxes = json.loads((root / BOXES_FILE).read_text())
    assert sorted(p.name for p in (root / IMAGES_DIR).iterdir()) == [e["filename"] for e in images]
    for entry in images:
        stem = Path(entry["filename"]).stem
        assert entry["filepath"] == IMAGES_DIR and entry["filename"] == f"{entry['imgid']:05d}.png"
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]] and len(entry["sentids"]) == 5
        assert len({s["raw"] for s in entry["sentences"]}) == 5
        for sentence in entry["sentences"]:
            assert sentence["imgid"] == entry["imgid"]
            assert sentence["tokens"] == [w for w in sentence["raw"].lower().split() if w.isalnum()]
        assert 1 <= len(entry["objects"]) <= 4
        assert boxes[stem] == [o["box"] for o in entry["objects"]]
        with Image.open(root / IMAGES_DIR / entry["filename"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))


def test_captions_name_every_object_and_nothing_else(demo: tuple[Path, dict]) -> None:
    for entry in demo[1]["images"]:
        objects = {(o["color"], o["shape"]): o for o in entry["objects"]}
        for sentence in entry["sentences"]:
            mentions, relations, counts = parse(sentence["tokens"])
            assert sorted((m["color"], m["shape"]) for m in mentions) == sorted(objects), sentence["raw"]
            assert all(m["size"] in (None, objects[m["color"], m["shape"]]["size"]) for m in mentions), sentence["raw"]
            assert all(count == len(objects) for count in counts), sentence["raw"]
            for first, relation, second in relations:
                (ax, ay), (bx, by) = (centre(objects[mentions[k]["color"], mentions[k]["shape"]]["box"])
                                      for k in (first, second))
                holds = {"left": ax < bx and abs(bx - ax) > abs(by - ay),
                         "right": ax > bx and abs(bx - ax) > abs(by - ay),
                         "above": ay < by and abs(by - ay) > abs(bx - ax),
                         "below": ay > by and abs(by - ay) > abs(bx - ax)}
                assert holds[relation], sentence["raw"]


def test_every_caption_identifies_its_image_within_the_split(demo: tuple[Path, dict]) -> None:
    by_split: dict[str, dict[tuple, int]] = {}
    for entry in demo[1]["images"]:
        split = by_split.setdefault(entry["split"], {})
        assert description(entry["objects"]) not in split, f"duplicate description in {entry['split']}"
        split[description(entry["objects"])] = entry["imgid"]
    for entry in demo[1]["images"]:
        for sentence in entry["sentences"]:
            mentions = parse(sentence["tokens"])[0]
            assert by_split[entry["split"]][description(mentions)] == entry["imgid"]


def test_rejection_sampling_fills_and_then_exhausts_the_description_space(tmp_path: Path) -> None:
    # One object per image: 8 colours x 6 shapes = 48 possible descriptions per split.
    config = DemoConfig(train_images=48, val_images=0, test_images=0, image_size=64, object_count_weights=(1.0,))
    data = json.loads((generate_demo(tmp_path / "full", config) / CAPTIONS_FILE).read_text())
    assert len({description(e["objects"]) for e in data["images"]}) == 48
    with pytest.raises(ValueError, match="no unused object description"):
        generate_demo(tmp_path / "over", dataclasses.replace(config, train_images=49))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_failed_generation_keeps_the_previous_dataset(tmp_path: Path) -> None:
    config = DemoConfig(train_images=3, val_images=1, test_images=1, image_size=64)
    out = generate_demo(tmp_path / "demo", config)
    (out / "stale.txt").write_text("from an older run")
    before = tree_bytes(out)
    impossible = dataclasses.replace(config, train_images=60, object_count_weights=(1.0,))
    with pytest.raises(ValueError):
        generate_demo(out, impossible)
    assert tree_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    generate_demo(out, config)
    assert not (out / "stale.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_boxes_lie_inside_the_image_and_cover_their_object(demo: tuple[Path, dict]) -> None:
    root, data = demo
    for entry in data["images"][:60]:
        image = np.asarray(Image.open(root / IMAGES_DIR / entry["filename"]))
        for obj in entry["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            assert (max(x2 - x1, y2 - y1) > 0.26 * SIZE) == (obj["size"] == "large")
            inside = color_mask(image, obj["color"])[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
            assert inside.mean() > 0.2, (entry["filename"], obj)


def test_crowded_scenes_keep_every_object_mostly_visible() -> None:
    rng = np.random.default_rng(0)
    placed = 0
    for _ in range(30):
        scene = layout(rng, sample_description(rng, (0.0, 0.0, 0.0, 1.0)), 64, 0.7)
        if scene is None:  # did not fit: the generator draws another scene
            continue
        placed += 1
        for k, cover in enumerate(scene.coverages):
            on_top = np.prod([1 - c for c in scene.coverages[k + 1:]], axis=0) if k + 1 < len(scene.coverages) else 1.0
            assert (cover * on_top).sum() >= 0.7 * cover.sum() - 1e-3
    assert placed >= 20


def test_boxes_are_tight_around_a_lone_object(tmp_path: Path) -> None:
    config = DemoConfig(train_images=12, val_images=0, test_images=0, image_size=SIZE, object_count_weights=(1.0,))
    root = generate_demo(tmp_path / "lone", config)
    for entry in json.loads((root / CAPTIONS_FILE).read_text())["images"]:
        (obj,) = entry["objects"]
        mask = color_mask(np.asarray(Image.open(root / IMAGES_DIR / entry["filename"])), obj["color"])
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = obj["box"]
        # Thin star tips cover little of their edge pixels, so allow 2.5 pixels.
        assert abs(xs.min() - x1) <= 2.5 and abs(ys.min() - y1) <= 2.5, entry["filename"]
        assert abs(xs.max() + 1 - x2) <= 2.5 and abs(ys.max() + 1 - y2) <= 2.5, entry["filename"]


def test_every_word_passes_a_vocabulary_threshold_of_four(demo: tuple[Path, dict]) -> None:
    counts = Counter(t for e in demo[1]["images"] if e["split"] == "train" for s in e["sentences"] for t in s["tokens"])
    language = set(COLORS) | set(SHAPES) | set(SIZES) | set(RELATIONS) | set(COUNTS) - {"one"} | FILLER
    assert {w for w in language if counts[w] < 4} == set()
    assert set(counts) <= language | {"one"}


def test_caption_length_alone_retrieves_poorly(demo: tuple[Path, dict]) -> None:
    """Length says roughly how many objects there are, but guessing by it stays far from R@1 of a model."""
    test_images = [e for e in demo[1]["images"] if e["split"] == "test"]
    images_per_length: dict[int, set[int]] = {}
    for entry in test_images:
        for sentence in entry["sentences"]:
            images_per_length.setdefault(len(sentence["tokens"]), set()).add(entry["imgid"])
    guess_hits = [1 / len(images_per_length[len(s["tokens"])]) for e in test_images for s in e["sentences"]]
    assert np.mean(guess_hits) < 0.15  # chance is 1/40; a learnt model gets far more


@pytest.mark.parametrize("bad", [{"train_images": -1}, {"captions_per_image": 0}, {"image_size": 16},
                                 {"object_count_weights": (0.0, 0.0)}, {"object_count_weights": (1, 1, 1, 1, 1)},
                                 {"min_visible_fraction": 0.0}, {"noise_std": -1.0}])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        DemoConfig(**bad)


def test_every_setting_is_documented() -> None:
    assert all(f.metadata.get("help") for f in dataclasses.fields(DemoConfig))
