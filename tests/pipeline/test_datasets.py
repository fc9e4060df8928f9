"""Dataset registry and readers on the real fixtures (Flickr8k, f30k_mini) and small on-disk layouts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import DatasetConfig
from pipeline.datasets import DATASETS, SPLITS, hashed_split, load_dataset, registered_config
from pipeline.demo import DemoConfig, generate_demo
from pipeline.errors import MissingDataError

F8K_IMAGES = ("1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg")


def test_registry_names_match_the_config_choices() -> None:
    from pipeline.config import DATASET_NAMES
    assert tuple(DATASETS) == DATASET_NAMES
    assert all("<data_root>" in spec.hint or "generate" in spec.hint for spec in DATASETS.values())


def test_f8k_karpathy_subset_reads_splits_and_skips_images_in_no_split(shared_data: Path) -> None:
    folder = shared_data / "flickr8k"
    dataset = load_dataset(DatasetConfig(name="f8k", image_dir=folder / "images",
                                         captions_file=folder / "dataset_flickr8k_subset.json"))
    assert [len(dataset.split(name)) for name in SPLITS] == [753, 113, 125]  # Karpathy "val" -> "dev"
    assert len(dataset.skipped) == 9 and all("no split" in item.reason for item in dataset.skipped)
    first = dataset.images[0]
    assert (first.image_id, first.relpath, first.split) == ("1000268201_693b08cb0e",
                                                            "1000268201_693b08cb0e.jpg", "train")
    assert first.captions[0] == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert len(first.captions) == 5 and first.path == folder.resolve() / "images" / first.relpath
    assert all(image.path.is_file() for image in dataset.images)


def test_f8k_official_token_file_agrees_with_the_karpathy_subset(shared_data: Path) -> None:
    """40,455 real captions, 8091 images; only 1000 images are present, so absent ones are skipped."""
    folder = shared_data / "flickr8k"
    from_tokens = load_dataset(DatasetConfig(name="f8k", image_dir=folder / "images", missing_images="skip",
                                             captions_file=folder / "Flickr8k.token.txt"))
    from_json = load_dataset(DatasetConfig(name="f8k", image_dir=folder / "images",
                                           captions_file=folder / "dataset_flickr8k_subset.json"))
    assert [(r.image_id, r.split, r.captions) for r in from_tokens.images] == \
           [(r.image_id, r.split, r.captions) for r in from_json.images]
    reasons = [item.reason for item in from_tokens.skipped]
    assert sum("no split" in reason for reason in reasons) == 91  # official token file, outside the lists
    assert sum(reason == "image file absent" for reason in reasons) == 8000 - 991


def test_f30k_mini_captions_match_scan_precomp_lines(shared_data: Path) -> None:
    """The Karpathy subset's raw captions are SCAN's {split}_caps.txt lines, 5 per image, in row order."""
    folder = shared_data / "f30k_mini"
    dataset = load_dataset(DatasetConfig(name="f30k", image_dir=folder / "images",
                                         captions_file=folder / "dataset_flickr30k_subset.json"))
    assert len(dataset.images) == 66 and dataset.images[0].image_id == "1007129816"
    by_name = {record.relpath: record for record in dataset.images}
    for split in ("dev", "test"):
        rows = [line.split("\t") for line in (folder / f"{split}_images.tsv").read_text().splitlines()[1:]]
        lines = (folder / f"{split}_caps.txt").read_text(encoding="utf-8").splitlines()
        for local_index, _, _, name in rows:
            record = by_name[name]
            start = 5 * int(local_index)
            assert record.split == split and list(record.captions) == [line.strip() for line in lines[start:start + 5]]


def test_custom_csv_with_and_without_split(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "flickr8k"
    rows = (source / "captions.txt").read_text(encoding="utf-8").splitlines()[:16]  # header + 3 images
    for name in F8K_IMAGES:
        shutil.copy(source / "images" / name, tmp_path / name)
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    dataset = load_dataset(DatasetConfig(name="custom", data_root=tmp_path / "unused", image_dir=tmp_path))
    assert [r.relpath for r in dataset.images] == list(F8K_IMAGES)
    assert [r.split for r in dataset.images] == [hashed_split(name) for name in F8K_IMAGES]
    assert [len(r.captions) for r in dataset.images] == [5, 5, 5]
    jsonl = "".join(json.dumps({"image": name, "caption": f"caption {k}", "split": "test"}) + "\n"
                    for name in F8K_IMAGES for k in range(2))
    (tmp_path / "captions.jsonl").write_text(jsonl, encoding="utf-8")
    dataset = load_dataset(DatasetConfig(name="custom", image_dir=tmp_path, captions_file=tmp_path / "captions.jsonl"))
    assert [(r.split, r.captions) for r in dataset.images] == [("test", ("caption 0", "caption 1"))] * 3


def test_hashed_split_is_stable_and_roughly_90_5_5() -> None:
    splits = [hashed_split(f"img_{number}.jpg") for number in range(4000)]
    assert hashed_split("img_7.jpg") == splits[7]
    shares = {name: splits.count(name) / len(splits) for name in SPLITS}
    assert 0.87 < shares["train"] < 0.93 and 0.03 < shares["dev"] < 0.07 and 0.03 < shares["test"] < 0.07


def _coco_layout(root: Path, shared_data: Path) -> None:
    folder = root / "coco"
    entries = []
    for number, (split, subdir, name) in enumerate(
            [("train", "train2014", F8K_IMAGES[0]), ("restval", "val2014", F8K_IMAGES[1]),
             ("val", "val2014", F8K_IMAGES[2])]):
        (folder / "images" / subdir).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "flickr8k" / "images" / name, folder / "images" / subdir / name)
        entries.append({"filepath": subdir, "filename": name, "imgid": number, "cocoid": 1000 + number, "split": split,
                        "sentids": [number],
                        "sentences": [{"raw": f"A photo {number} .", "tokens": ["a"], "sentid": number}]})
    (folder / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))


def test_coco_layout_ids_splits_and_registered_config(shared_data: Path, tmp_path: Path) -> None:
    _coco_layout(tmp_path, shared_data)
    config = registered_config("coco", tmp_path)
    assert (config.image_dir, config.captions_file) == (tmp_path / "coco" / "images",
                                                        tmp_path / "coco" / "dataset_coco.json")
    dataset = load_dataset(config)
    assert [(r.image_id, r.relpath, r.split) for r in dataset.images] == [
        ("1000", f"train2014/{F8K_IMAGES[0]}", "train"), ("1001", f"val2014/{F8K_IMAGES[1]}", "train"),
        ("1002", f"val2014/{F8K_IMAGES[2]}", "dev")]
    assert dataset.source == tmp_path / "coco" / "dataset_coco.json" and dataset.boxes_file is None


def test_demo_generated_layout_reads_with_boxes(tmp_path: Path) -> None:
    generate_demo(tmp_path / "demo", DemoConfig(train_images=3, val_images=1, test_images=1))
    dataset = load_dataset(DatasetConfig(name="demo", data_root=tmp_path))
    assert [len(dataset.split(name)) for name in SPLITS] == [3, 1, 1]
    boxes = json.loads(dataset.boxes_file.read_text())
    assert set(boxes) == {r.image_id for r in dataset.images}
    assert all(r.path.is_file() and r.relpath.startswith("images/") for r in dataset.images)


def test_missing_dataset_names_the_file_and_where_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCAN_DATA_ROOT", str(tmp_path))
    with pytest.raises(MissingDataError, match=r"f30k/dataset_flickr30k.json.*caption_datasets.zip"):
        load_dataset(DatasetConfig(name="f30k"))
    with pytest.raises(MissingDataError, match=r"f30k/images: image folder of dataset 'f30k' not found"):
        load_dataset(DatasetConfig(name="f30k", captions_file=Path(__file__)))
    (tmp_path / "f30k" / "images").mkdir(parents=True)
    (tmp_path / "f30k" / "results_20130124.token").write_text("1.jpg#0\tA dog .\n")
    with pytest.raises(MissingDataError, match=r"train.txt: split list missing"):
        load_dataset(DatasetConfig(name="f30k"))
    assert "shannon.cs.illinois.edu" in DATASETS["f30k"].hint


def test_f30k_token_file_with_id_split_lists(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "f30k"
    (folder / "images").mkdir(parents=True)
    lines = []
    for number, name in enumerate(("111.jpg", "222.jpg", "333.jpg", "444.jpg")):
        shutil.copy(shared_data / "flickr8k" / "images" / F8K_IMAGES[number % 3], folder / "images" / name)
        lines += [f"{name}#{k}\tCaption {k} of {name} ." for k in range(2)]
    (folder / "results_20130124.token").write_text("\n".join(lines) + "\n")
    for split, names in (("train", "111\n222.jpg\n"), ("dev", "333\n"), ("test", "")):
        (folder / f"{split}.txt").write_text(names)
    dataset = load_dataset(registered_config("f30k", tmp_path))
    assert [(r.image_id, r.split) for r in dataset.images] == [("111", "train"), ("222", "train"), ("333", "dev")]
    assert dataset.skipped[0].reason == "'444.jpg' is in no split"
