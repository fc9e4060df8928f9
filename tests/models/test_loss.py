"""ContrastiveLoss: both negative modes against a by-hand definition, warm-up switching."""
import pytest
import torch

from models.config import TrainConfig
from models.loss import ContrastiveLoss


def loss_by_definition(scores, margin, hardest):
    """Loop over queries; each term is max(0, margin + s(negative) - s(positive))."""
    n = scores.size(0)
    total = 0.0
    for i in range(n):
        captions = [max(0.0, margin + scores[i, j].item() - scores[i, i].item()) for j in range(n) if j != i]
        images = [max(0.0, margin + scores[j, i].item() - scores[i, i].item()) for j in range(n) if j != i]
        total += (max(captions) + max(images)) if hardest else (sum(captions) + sum(images))
    return total


@pytest.mark.parametrize("hardest", [True, False])
def test_matches_the_definition(hardest):
    scores = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 0.3
    loss = ContrastiveLoss(margin=0.2, max_violation=hardest)(scores)
    assert loss.item() == pytest.approx(loss_by_definition(scores, 0.2, hardest), abs=1e-5)


def test_hand_computed_example_and_zero_when_separated():
    scores = torch.tensor([[0.9, 0.8], [0.1, 0.5]])
    # caption side: row0 0.2+0.8-0.9=0.1, row1 0.2+0.1-0.5=0; image side: col0 0.2+0.1-0.9=0, col1 0.2+0.8-0.5=0.5
    assert ContrastiveLoss(0.2, True)(scores).item() == pytest.approx(0.6)
    assert ContrastiveLoss(0.2, True)(torch.eye(3)).item() == 0.0


def test_gradient_reaches_only_violating_pairs():
    scores = torch.tensor([[0.9, 0.8], [0.1, 0.5]], requires_grad=True)
    ContrastiveLoss(0.2, True)(scores).backward()
    assert scores.grad.tolist() == [[-1.0, 2.0], [0.0, -1.0]]


def test_warmup_sums_negatives_then_uses_the_hardest():
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(2)) * 0.3
    loss = ContrastiveLoss.from_config(TrainConfig(margin=0.2, max_violation=True, warmup_epochs=2))
    summed, hardest = loss_by_definition(scores, 0.2, False), loss_by_definition(scores, 0.2, True)
    assert loss(scores).item() == pytest.approx(summed, abs=1e-5)
    loss.set_epoch(1)
    assert loss(scores).item() == pytest.approx(summed, abs=1e-5)
    loss.set_epoch(2)
    assert loss(scores).item() == pytest.approx(hardest, abs=1e-5)
    never_hardest = ContrastiveLoss(0.2, max_violation=False, warmup_epochs=2)
    never_hardest.set_epoch(10)
    assert never_hardest(scores).item() == pytest.approx(summed, abs=1e-5)


def test_rejects_non_square_scores():
    with pytest.raises(ValueError, match="square"):
        ContrastiveLoss()(torch.zeros(2, 3))
