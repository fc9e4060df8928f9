"""Two-stage ranks under the retrieval protocol, against a per-query restatement of the rule."""
from __future__ import annotations

import numpy as np

from models.evaluate import format_table, shortlist_sizes, two_stage_ranks


def restated_rank(scan_row: np.ndarray, global_row: np.ndarray, truths: list[int], size: int) -> int:
    """Order: the `size` best items by global score, sorted by SCAN; then the rest by global score."""
    shortlist = list(np.argsort(-global_row, kind="stable")[:size])
    rest = [i for i in np.argsort(-global_row, kind="stable") if i not in shortlist]
    order = sorted(shortlist, key=lambda i: -scan_row[i]) + rest
    return min(order.index(t) for t in truths)


def test_two_stage_ranks_follow_the_rule_in_both_directions():
    rng = np.random.default_rng(0)
    n_img = 12
    scan, pooled = rng.normal(size=(n_img, 5 * n_img)), rng.normal(size=(n_img, 5 * n_img))
    ranks = two_stage_ranks(scan, pooled, fraction=0.25)
    sizes = shortlist_sizes(n_img, 0.25)
    assert sizes == {"t2i": 3, "i2t": 15}
    t2i = [restated_rank(scan[:, c], pooled[:, c], [c // 5], sizes["t2i"]) for c in range(5 * n_img)]
    i2t = [restated_rank(scan[i], pooled[i], list(range(5 * i, 5 * i + 5)), sizes["i2t"]) for i in range(n_img)]
    np.testing.assert_array_equal(ranks["t2i"], t2i)
    np.testing.assert_array_equal(ranks["i2t"], i2t)


def test_a_whole_gallery_shortlist_is_scan_and_tables_list_every_mode():
    rng = np.random.default_rng(1)
    scan, pooled = rng.normal(size=(6, 30)), rng.normal(size=(6, 30))
    staged = two_stage_ranks(scan, pooled, fraction=1.0)
    exact = two_stage_ranks(scan, scan, fraction=0.1)
    np.testing.assert_array_equal(staged["t2i"], exact["t2i"])
    row = {"r1": 1.0, "r5": 2.0, "r10": 3.0, "medr": 4.0, "meanr": 5.0}
    table = {"i2t": row, "t2i": row, "rsum": 12.0}
    results = {**table, "modes": {"exact": table, "global": table,
                                  "two-stage": {**table, "shortlist": {"t2i": 5, "i2t": 25}}}}
    text = format_table(results)
    assert (text.startswith(format_table(table)) and "global:" in text
            and "two-stage (N = 5 images / 25 captions)" in text)
