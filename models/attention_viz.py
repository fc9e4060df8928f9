"""PNG pictures of SCAN attention, as the paper's figures: per word, the regions it attends to.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change).
The picture is a grid of square panels PANEL_PX wide: first the image with every region box,
then one panel per word (t2i: each box lit and coloured by the word's weight on it, the
image dimmed where nothing is attended; the most attended box outlined) or per
region (i2t: the region's box with its most attended words).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from models.attention import PairAttention, explain_pair
from models.compat import load_model_with_vocab
from models.encoders import SCANModel
from pipeline.atomic import atomic_output
from pipeline.captions import SPECIALS, Vocabulary
from pipeline.errors import InputError
from pipeline.store import StoreReader, RegionRecord

PANEL_PX = 240
DPI = 100
COLUMNS = 4
HEAT_ALPHA = 0.55
TOP_WORDS = 3


def load_image(path: str | PathLike[str] | None, image_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 pixels of the image file, or a grey canvas of the stored size when None."""
    if path is None:
        return np.full((*image_hw, 3), 128, dtype=np.uint8)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def picture_size(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture with ``n_panels`` panels."""
    columns = min(COLUMNS, n_panels)
    return columns * PANEL_PX, math.ceil(n_panels / columns) * PANEL_PX


def word_panels(attention: PairAttention, max_words: int = 11) -> list[int]:
    """Positions of the words drawn (specials like <start>/<end> left out)."""
    return [i for i, word in enumerate(attention.words) if word not in SPECIALS[:3]][:max_words]


def region_panels(attention: PairAttention, max_regions: int = 11) -> list[int]:
    """The regions best matched by their caption context, most relevant first."""
    return [int(r) for r in np.argsort(-attention.region_relevance, kind="stable")[:max_regions]]


def draw_attention(attention: PairAttention, image: np.ndarray, out_png: str | PathLike[str], *,
                   view: str | None = None, max_panels: int = 11) -> Path:
    """Writes the picture (atomically) and returns its path; ``view`` t2i | i2t, default the model's."""
    view = view or attention.cross_attn
    boxes = scaled_boxes(attention, image.shape[:2])
    chosen = word_panels(attention, max_panels) if view == "t2i" else region_panels(attention, max_panels)
    width, height = picture_size(1 + len(chosen))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    columns = width // PANEL_PX
    axes = [figure.add_axes(_panel_rect(i, columns, width, height)) for i in range(1 + len(chosen))]
    _draw_boxes(axes[0], image, boxes, f"{attention.image_id}: {len(boxes)} regions")
    for ax, index in zip(axes[1:], chosen):
        if view == "t2i":
            _draw_word(ax, image, boxes, attention, index)
        else:
            _draw_region(ax, image, boxes, attention, index)
    return _save(figure, Path(out_png))


def scaled_boxes(attention: PairAttention, shown_hw: tuple[int, int]) -> np.ndarray:
    """Boxes (R, 4) in the pixels of the shown image (the file may be a resized copy)."""
    scale_y, scale_x = shown_hw[0] / attention.image_hw[0], shown_hw[1] / attention.image_hw[1]
    return attention.boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)


def heat_map(boxes: np.ndarray, weights: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) largest weight among the boxes covering each pixel (overlaps do not add up)."""
    heat = np.zeros(hw, dtype=np.float32)
    for (x1, y1, x2, y2), weight in zip(boxes, weights):
        rows = slice(max(int(y1), 0), max(int(math.ceil(y2)), 0))
        columns = slice(max(int(x1), 0), max(int(math.ceil(x2)), 0))
        np.maximum(heat[rows, columns], weight, out=heat[rows, columns])
    return heat


def _draw_word(ax, image: np.ndarray, boxes: np.ndarray, attention: PairAttention, word: int) -> None:
    weights = attention.word_to_region[word]
    heat = heat_map(boxes, weights, image.shape[:2]) / max(float(weights.max()), 1e-12)
    colored = colormaps["jet"](heat)[..., :3] * 255
    alpha = HEAT_ALPHA * heat[..., None]
    blended = ((1 - alpha) * image + alpha * colored) * (0.3 + 0.7 * heat[..., None])
    _show(ax, blended.astype(np.uint8), f"{attention.words[word]}  (max {weights.max():.2f})")
    _box(ax, boxes[int(weights.argmax())], "white")


def _draw_region(ax, image: np.ndarray, boxes: np.ndarray, attention: PairAttention, region: int) -> None:
    weights = attention.region_to_word[region]
    top = np.argsort(-weights, kind="stable")[:TOP_WORDS]
    _show(ax, (image * 0.6).astype(np.uint8), f"region {region}")
    _box(ax, boxes[region], "yellow")
    label = "\n".join(f"{attention.words[w]} {weights[w]:.2f}" for w in top)
    ax.text(0.02, 0.98, label, transform=ax.transAxes, va="top", fontsize=8, color="black",
            bbox={"facecolor": "white", "alpha": 0.8, "pad": 2})


def _draw_boxes(ax, image: np.ndarray, boxes: np.ndarray, title: str) -> None:
    _show(ax, image, title)
    for box in boxes:
        _box(ax, box, "lime")


def _show(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9, pad=2)


def _box(ax, box: Sequence[float], color: str) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))


def _panel_rect(index: int, columns: int, width: int, height: int) -> list[float]:
    """Axes rectangle (figure fractions) of panel ``index``, leaving room for its title."""
    row, column = divmod(index, columns)
    margin, title = 6, 18
    left = (column * PANEL_PX + margin) / width
    bottom = (height - (row + 1) * PANEL_PX + margin) / height
    return [left, bottom, (PANEL_PX - 2 * margin) / width, (PANEL_PX - 2 * margin - title) / height]


def _save(figure: Figure, out_png: Path) -> Path:
    out_png.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    with atomic_output(out_png) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    return out_png


def draw_pair(checkpoint: str | PathLike[str], store_dir: str | PathLike[str], vocab_path: str | PathLike[str],
              image_id: str, caption: str, out_png: str | PathLike[str], *,
              image_file: str | PathLike[str] | None = None, view: str | None = None) -> tuple[Path, PairAttention]:
    """The attention picture of one (image, caption) pair with a trained model; returns it and the attention."""
    model, vocab, store = _open(checkpoint, vocab_path, store_dir)
    attention = pair_attention(model, vocab, store, image_id, caption)
    return draw_attention(attention, load_image(image_file, attention.image_hw), out_png, view=view), attention


def draw_examples(checkpoint: str | PathLike[str], store_dir: str | PathLike[str], vocab_path: str | PathLike[str],
                  examples: Sequence[tuple[str, str, str | PathLike[str] | None]],
                  out_dir: str | PathLike[str]) -> list[Path]:
    """One picture per (image_id, caption, image file) with a trained model: the report's attention examples.

    Images whose store rows carry no boxes or size (SCAN precomp imports) are left out: there is nothing to draw.
    """
    model, vocab, store = _open(checkpoint, vocab_path, store_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for image_id, caption, image_file in examples:
        if image_id not in store:  # the extractor could not read it: nothing to draw
            continue
        attention = pair_attention(model, vocab, store, image_id, caption)
        if 0 in attention.image_hw:
            continue
        image = load_image(image_file, attention.image_hw)
        pictures.append(draw_attention(attention, image, out_dir / f"attention_{image_id}.png"))
    return pictures


def pair_attention(model: SCANModel, vocab: Vocabulary, store: StoreReader, image_id: str,
                   caption: str) -> PairAttention:
    """The attention of a stored image and a caption: what the pictures draw and the search service returns."""
    return explain_pair(model, vocab, _record(store, store.store_dir, image_id), caption)


def _open(checkpoint: str | PathLike[str], vocab_path: str | PathLike[str],
          store_dir: str | PathLike[str]) -> tuple[SCANModel, Vocabulary, StoreReader]:
    loaded, vocab = load_model_with_vocab(checkpoint, vocab_path)
    return loaded.model, vocab, StoreReader(store_dir)


def _record(store: StoreReader, store_dir: str | PathLike[str], image_id: str) -> RegionRecord:
    try:
        return store.get(image_id)
    except KeyError as error:
        raise InputError(store_dir, str(error.args[0])) from None
