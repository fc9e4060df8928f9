"""Is a dataset fit for training and evaluating SCAN? Checked in seconds, before any image is touched."""
from __future__ import annotations

from pipeline.datasets.records import Dataset
from pipeline.errors import InputError

CAPTIONS_PER_EVAL_IMAGE = 5  # the retrieval protocol pairs caption j with image j // 5
SHOWN = 3


def check_trainable(dataset: Dataset) -> None:
    """Raise InputError (naming the captions file) unless train, dev and test all have images, and every
    dev and test image has the 5 captions the evaluation protocol needs."""
    problems = [f"split {split!r} has no images" for split in ("train", "dev", "test") if not dataset.split(split)]
    for split in ("dev", "test"):
        short = [image.image_id for image in dataset.split(split) if len(image.captions) < CAPTIONS_PER_EVAL_IMAGE]
        if short:
            problems.append(f"{len(short)} {split} images have fewer than {CAPTIONS_PER_EVAL_IMAGE} captions "
                            f"(e.g. {', '.join(short[:SHOWN])}); evaluation pairs each image with 5")
    if problems:
        raise InputError(dataset.source, "not usable for training and evaluation: " + "; ".join(problems)
                         + f" ({len(dataset.images)} images read; splits come from the file's split field or, "
                           "for custom data without one, from a hash of each image path)")
