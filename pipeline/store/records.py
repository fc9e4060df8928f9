"""What one image contributes to a feature store: its kept regions and their labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RegionRecord:
    """Regions of one image, boxes in original-image pixel coordinates (x1, y1, x2, y2).

    Arrays are numpy: features (K, D) float32, boxes (K, 4) float32, object_ids / attr_ids (K,)
    int64, object_conf / attr_conf (K,) float32; K = num_boxes varies per image (adaptive boxes).
    Label ids are detector class indices: 0 = background / no attribute, i + 1 = line i of the VG
    objects_vocab.txt / attributes_vocab.txt (importers of 0-based TSV ids shift them).
    """

    image_id: str
    features: np.ndarray
    boxes: np.ndarray
    object_ids: np.ndarray
    object_conf: np.ndarray
    attr_ids: np.ndarray
    attr_conf: np.ndarray
    image_hw: tuple[int, int]

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])
