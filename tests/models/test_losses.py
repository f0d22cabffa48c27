"""Losses against hand computations; named terms; uncertainty weighting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multimodal_doubleloop.models import HeadConfig
from multimodal_doubleloop.models.heads import ContrastiveOutput
from multimodal_doubleloop.models.losses import (
    UncertaintyWeighting,
    caption_loss,
    classification_loss,
    contrastive_loss,
    focal_loss,
    head_loss,
    multilabel_loss,
    regression_loss,
    total,
)


def test_classification_label_smoothing_and_ignore():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]])
    labels = torch.tensor([0, 2, -1])  # the last row is unlabelled
    eps = 0.3
    logp = logits[:2].log_softmax(-1)
    want = ((1 - eps) * -logp[[0, 1], [0, 2]] + eps * -logp.mean(-1)).mean()
    terms = classification_loss(logits, labels, label_smoothing=eps)
    assert list(terms) == ["ce"]
    torch.testing.assert_close(terms["ce"], want)


def test_focal_reduces_to_ce_and_downweights_easy_rows():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, -1, 1])
    ce = classification_loss(logits, labels)["ce"]
    torch.testing.assert_close(focal_loss(logits, labels, gamma=0.0)["focal"], ce)
    # one row by hand: p_t = 0.8 -> -(0.2 ** 2) log 0.8
    two = torch.tensor([[math.log(0.8), math.log(0.2)]])
    want = -(0.2**2) * math.log(0.8)
    assert focal_loss(two, torch.tensor([0]), gamma=2.0)["focal"].item() == pytest.approx(want)
    assert focal_loss(logits, labels, gamma=2.0)["focal"] < ce


def test_focal_with_no_labelled_rows_is_zero_and_differentiable():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = focal_loss(logits, torch.full((3,), -1))["focal"]
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_multilabel_bce_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    targets = torch.tensor([[1, 0], [0, 1]])
    p = torch.sigmoid(logits)
    want = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    torch.testing.assert_close(multilabel_loss(logits, targets)["bce"], want)


def test_regression_kinds():
    pred, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 1.0])
    assert regression_loss(pred, target)["mse"].item() == pytest.approx((0 + 4 + 9) / 3)
    assert regression_loss(pred, target, "l1")["l1"].item() == pytest.approx((0 + 2 + 3) / 3)
    with pytest.raises(ValueError, match="kind"):
        regression_loss(pred, target, "huber")


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_contrastive_matches_clip_when_paired_one_to_one():
    torch.manual_seed(0)
    img, txt, scale = unit(torch.randn(5, 8)), unit(torch.randn(5, 8)), torch.tensor(10.0)
    logits = scale * img @ txt.t()
    labels = torch.arange(5)
    want = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    terms = contrastive_loss(img, txt, scale)
    assert set(terms) == {"contrastive_t2i", "contrastive_i2t"}
    torch.testing.assert_close(total(terms), want)


def test_contrastive_aligned_pairs_score_low_and_swapped_high():
    emb = unit(torch.eye(4, 8))
    aligned = total(contrastive_loss(emb, emb, torch.tensor(100.0)))
    swapped = total(contrastive_loss(emb, emb.flip(0), torch.tensor(100.0)))
    assert aligned.item() < 1e-6 and swapped.item() > 10


def test_contrastive_image_major_by_hand():
    """Two images, three texts (texts 0 and 2 show image 0), plus an image no text
    points at: it stays a negative for text->image and drops out of image->text."""
    torch.manual_seed(1)
    img, txt, scale = unit(torch.randn(3, 8)), unit(torch.randn(3, 8)), torch.tensor(5.0)
    index = torch.tensor([0, 1, 0])
    s = scale * txt @ img.t()  # (texts, images)
    t2i = -(s.log_softmax(1)[[0, 1, 2], index]).mean()
    col = s.t().log_softmax(1)  # (images, texts)
    i2t = (-(col[0, 0] + col[0, 2]) / 2 - col[1, 1]) / 2  # image 2 has no text
    terms = contrastive_loss(img, txt, scale, index)
    torch.testing.assert_close(terms["contrastive_t2i"], t2i / 2)
    torch.testing.assert_close(terms["contrastive_i2t"], i2t / 2)
    with pytest.raises(ValueError, match="image_index"):
        contrastive_loss(img[:2], txt, scale)


def test_caption_loss_shifts_and_ignores_padding():
    torch.manual_seed(0)
    ids = torch.tensor([[5, 9, 6, 0, 0], [5, 8, 7, 9, 6]])
    logits = torch.randn(2, 5, 12, requires_grad=True)
    loss = caption_loss(logits, ids, pad_id=0)["caption_ce"]
    pairs = [(0, 0, 9), (0, 1, 6), (1, 0, 8), (1, 1, 7), (1, 2, 9), (1, 3, 6)]
    logp = logits.log_softmax(-1)
    want = -torch.stack([logp[b, t, y] for b, t, y in pairs]).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert logits.grad[0, 2:].abs().sum() == 0  # positions predicting [PAD] or past the end
    assert logits.grad[:, -1].abs().sum() == 0


def test_head_loss_follows_the_config():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    cls = HeadConfig(type="classification", num_outputs=3, label_smoothing=0.1)
    torch.testing.assert_close(
        head_loss(cls, logits, labels)["ce"], classification_loss(logits, labels, 0.1)["ce"]
    )
    focal = HeadConfig(type="classification", num_outputs=3, loss="focal", focal_gamma=1.0)
    torch.testing.assert_close(
        head_loss(focal, logits, labels)["focal"], focal_loss(logits, labels, 1.0)["focal"]
    )
    l1 = HeadConfig(type="regression", num_outputs=1, loss="l1")
    assert list(head_loss(l1, torch.zeros(4), torch.ones(4))) == ["l1"]
    assert list(
        head_loss(HeadConfig(type="multilabel"), logits, labels.clamp(max=1)[:, None].expand(4, 3))
    ) == ["bce"]
    out = ContrastiveOutput(
        unit(torch.randn(4, 8)), unit(torch.randn(4, 8)), torch.tensor(2.0), None
    )
    assert len(head_loss(HeadConfig(type="contrastive"), out)) == 2
    with pytest.raises(ValueError, match="needs a target"):
        head_loss(cls, logits)
    with pytest.raises(ValueError, match="ContrastiveOutput"):
        head_loss(HeadConfig(type="contrastive"), logits)


def test_uncertainty_weighting_learns_log_loss():
    """With fixed task losses the optimum of exp(-s) L + s is s = log L: the noisier
    task ends with the smaller weight."""
    weighting = UncertaintyWeighting(["a", "b"])
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.5)}
    terms = weighting(losses)
    assert set(terms) == {"a", "a_log_var", "b", "b_log_var"}
    torch.testing.assert_close(total(terms), torch.tensor(4.5))  # s = 0 at the start
    opt = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        total(weighting(losses)).backward()
        opt.step()
    torch.testing.assert_close(
        weighting.log_vars.detach(), torch.tensor([math.log(4.0), math.log(0.5)]), atol=0.02, rtol=0
    )
    w = weighting.weights()
    assert w["a"] < w["b"]


def test_uncertainty_weighting_subset_and_unknown_tasks():
    weighting = UncertaintyWeighting(["a", "b"], init_log_var=1.0)
    terms = weighting({"b": torch.tensor(2.0)})
    assert set(terms) == {"b", "b_log_var"}
    assert terms["b"].item() == pytest.approx(2.0 * math.exp(-1.0))
    with pytest.raises(ValueError, match="unknown task"):
        weighting({"c": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="unique"):
        UncertaintyWeighting(["a", "a"])
