"""Each task type's metrics on hand-made outputs with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_recall as tm_recall

from multimodal_doubleloop.tasks import (
    TaskConfig,
)
from multimodal_doubleloop.tasks.caption import CaptionTask
from multimodal_doubleloop.tasks.classification import ClassificationTask
from multimodal_doubleloop.tasks.contrastive import ContrastiveTask
from multimodal_doubleloop.tasks.metrics import bleu, cider_d, retrieval_recall
from multimodal_doubleloop.tasks.multilabel import MultilabelTask
from multimodal_doubleloop.tasks.regression import RegressionTask

# --- metrics with known answers --------------------------------------------------


def test_retrieval_recall_with_several_relevant_items():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3],  # ranking 0, 2, 3, 1
            [0.2, 0.8, 0.7, 0.1],  # ranking 1, 2, 0, 3
            [0.4, 0.3, 0.2, 0.1],  # ranking 0, 1, 2, 3
        ]
    )
    relevant = torch.tensor([[0, 3], [1, 2], [1, 0], [2, 3]])  # query 1 has two
    recall = retrieval_recall(scores, relevant, ks=(1, 2, 3), chunk=2)
    # query 0 finds item 3 third, query 1 item 2 second, query 2 item 3 only fourth
    assert recall == {1: 0.0, 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}
    # with one relevant item per query, "any relevant item in the top k" is torchmetrics'
    # recall@k (the fraction of relevant items retrieved)
    target = torch.zeros_like(scores, dtype=torch.bool)
    target[relevant[:, 0], relevant[:, 1]] = True
    singles = torch.tensor([0, 2])
    remapped = torch.tensor([[0, 3], [1, 3]])
    for k in (1, 2, 3, 4):
        expected = np.mean([float(tm_recall(scores[q], target[q], top_k=k)) for q in singles])
        assert retrieval_recall(scores[singles], remapped, ks=(k,))[k] == pytest.approx(expected)


def test_bleu_and_cider_d_match_pycocoevalcap():
    # reference values computed with pycocoevalcap 1.2 (Bleu(4), Cider) on the same
    # word-tokenised captions
    cands = ["a man riding a horse on a beach", "a dog on a couch", "two cats sleeping",
             "a red bus driving down the street"]
    refs = [
        ["a man rides a horse along the beach", "a person riding a horse on the sand", "man on horse at beach"],
        ["a dog laying on a couch", "a brown dog sleeping on the sofa"],
        ["two cats asleep on a bed", "a couple of cats sleeping together"],
        ["a red double decker bus on a street", "a bus driving down a city street"],
    ]
    assert bleu(cands, refs) == pytest.approx(
        [0.767294320487577, 0.6381607313428739, 0.45022865962884834, 0.2889643806890967], abs=1e-12
    )
    assert cider_d(cands, refs) == pytest.approx(2.4058526547257846, abs=1e-12)
    short = ["a blue circle", "a red triangle", "a blue circle"]
    short_refs = [["a blue circle"], ["a red rectangle"], ["a green circle"]]
    assert cider_d(short, short_refs) == pytest.approx(3.4332360108866578, abs=1e-12)
    # a perfect three-word caption: BLEU-3 is 1, BLEU-4 has no 4-grams to match
    perfect = bleu(["A blue circle."], [["a blue circle"]])
    assert perfect[2] == pytest.approx(1.0) and perfect[3] == pytest.approx(1e-6**0.25)


def test_classification_metrics():
    task = ClassificationTask("answer", TaskConfig(), ["a", "b", "c"], 0.0)
    table = pd.DataFrame({"answer": ["a", "a", "b", "c", "zzz", ""], "question_type": ["x", "x", "y", "y", "y", "caption"]})
    out = {"predictions": torch.tensor([0, 1, 1, 1, 2, 0]), "labels": torch.tensor([0, 0, 1, 2, -1, -1])}
    m = task.metrics(out, table, {})
    # rows 0-4 are the task's (row 5 has no answer); "zzz" is outside the vocabulary: wrong
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["accuracy_x"] == pytest.approx(1 / 2) and m["accuracy_y"] == pytest.approx(1 / 3)
    # per class F1 over labelled rows: a = 2/3 (1 TP, 1 FN), b = 1/2 (1 TP, 2 FP), c = 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert "accuracy_caption" not in m


def test_multilabel_metrics():
    task = MultilabelTask("attributes", TaskConfig("multilabel", target=["color", "shape"]), ["blue", "circle", "red"])
    out = {
        "probs": torch.tensor([[0.55, 0.8, 0.1], [0.2, 0.7, 0.6], [0.6, 0.4, 0.3]]),
        "target": torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]),
    }
    m = task.metrics(out, pd.DataFrame(), {})
    # predictions at 0.5: [1,1,0], [0,1,1], [1,0,0] -> TP 4, FP 1, FN 1
    assert m["micro_f1"] == pytest.approx(0.8)
    # per label: blue P=1/2 R=1 -> 2/3; circle P=1 R=2/3 -> 0.8; red 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)
    # AP: blue 1/2 (its positive ranks second), circle (1 + 1 + 1) / 3 = 1, red 1
    assert m["map"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert m["exact_match"] == pytest.approx(2 / 3)


def test_regression_metrics():
    task = RegressionTask("coverage", TaskConfig("regression", target="coverage"))
    m = task.metrics({"pred": torch.tensor([0.1, 0.2, 0.5]), "target": torch.tensor([0.1, 0.4, 0.2])}, None, {})
    assert m["mae"] == pytest.approx(0.5 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((0.04 + 0.09) / 3))


def test_contrastive_metrics_and_zero_shot():
    task = ContrastiveTask("retrieval", TaskConfig("contrastive", zero_shot="label", prompt="a {}"), ["cat", "dog"])
    e = torch.eye(3)
    out = {
        # image 13 has no description and no known class: in neither gallery nor zero-shot
        "image_rows": torch.tensor([10, 11, 12, 13]),
        "image_embeds": torch.stack([e[0], e[1], e[1], e[2]]),  # images 11 and 12 look alike
        "text_ids": torch.tensor([0, 1, 1, 2]),
        "text_image_rows": torch.tensor([10, 11, 11, 12]),  # text 1 is row 11's, twice
        "text_embeds": torch.stack([e[0], e[1], e[1], e[2]]),
    }
    table = pd.DataFrame({"image_id": ["i10", "i11", "i12", "i13"], "label": ["cat", "dog", "cat", ""]})
    context = {
        "image_ids": {10: "i10", 11: "i11", 12: "i12", 13: "i13"},
        "encode_text": lambda name, texts: torch.stack([e[0], e[1]]) if texts == ["a cat", "a dog"] else None,
    }
    m = task.metrics(out, table, context)
    assert (m["images"], m["texts"]) == (3, 3)
    # image 12's text (2) is orthogonal to it: a miss at 1; images 10, 11 hit
    assert m["i2t_recall_at_1"] == pytest.approx(2 / 3)
    # texts 0 and 1 find their images first; text 2 ranks image 12 after 10 and 11 (ties)
    assert m["t2i_recall_at_1"] == pytest.approx(2 / 3) and m["t2i_recall_at_5"] == 1.0
    # zero-shot: i10 -> cat (right), i11 -> dog (right), i12 -> dog (wrong: it is a cat)
    assert m["zero_shot_accuracy"] == pytest.approx(2 / 3)


def test_caption_metrics_and_samples():
    special = {"cls_id": 2, "sep_id": 3, "bos_id": 5, "eos_id": 6, "pad_id": 0}
    task = CaptionTask("caption", TaskConfig("caption", num_samples=1), special)
    table = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "b"],
            "text": ["a red square", "a square that is red", "a blue circle", "what is this?"],
            "question_type": ["caption", "caption", "caption", "color"],
        }
    )
    out = {"image_rows": torch.tensor([0, 1]), "generated": [torch.tensor([1]), torch.tensor([2])]}
    words = {1: "A square that is red.", 2: "a blue square"}
    context = {"image_ids": ["a", "b"], "decode": lambda ids: words[ids[0]]}
    m = task.metrics(out, table, context)
    assert m["exact_match"] == 0.5 and m["images"] == 2  # case and punctuation do not count
    assert m["bleu1"] == pytest.approx(bleu(list(words.values()), [["a red square", "a square that is red"], ["a blue circle"]])[0])
    assert context["caption_samples"] == [
        {"task": "caption", "image_id": "a", "generated": words[1], "references": ["a red square", "a square that is red"]}
    ]


