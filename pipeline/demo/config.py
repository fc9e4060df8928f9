"""Settings of the embedded demo dataset, defined once; Luigi parameters are generated from them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DemoConfig:
    """How many synthetic images to draw, how, and with how many captions each."""

    seed: int = field(default=0, metadata={"help": "Random seed; the same seed gives byte-identical files."})
    train_images: int = field(default=2000, metadata={"help": "Images in the train split."})
    val_images: int = field(default=200, metadata={"help": "Images in the val split."})
    test_images: int = field(default=200, metadata={"help": "Images in the test split."})
    captions_per_image: int = field(default=5, metadata={"help": "Distinct captions written for each image."})
    image_size: int = field(default=128, metadata={"help": "Side of the square PNG images, in pixels."})
    object_count_weights: tuple[float, ...] = field(
        default=(0.05, 0.25, 0.35, 0.35),
        metadata={"help": "Relative frequency of images with 1, 2, ... objects (at most 4); 0 excludes a count."})
    min_visible_fraction: float = field(
        default=0.7, metadata={"help": "Least fraction of each object's area left visible "
                                       "by the objects drawn over it."})
    noise_std: float = field(default=3.0, metadata={"help": "Standard deviation of the sensor-like pixel noise "
                                                            "(0-255 scale)."})

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "test_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; expected a count >= 0")
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image={self.captions_per_image}; expected >= 1")
        if self.image_size < 48:
            raise ValueError(f"image_size={self.image_size}; expected >= 48 so shapes stay recognisable")
        weights = self.object_count_weights
        if not 1 <= len(weights) <= 4 or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"object_count_weights={weights}; expected 1 to 4 non-negative weights, not all zero")
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction={self.min_visible_fraction}; expected a fraction in (0, 1]")
        if self.noise_std < 0:
            raise ValueError(f"noise_std={self.noise_std}; expected >= 0")

    @property
    def split_sizes(self) -> dict[str, int]:
        """Images per split, in the order their ids are assigned."""
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images}
