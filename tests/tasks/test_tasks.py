"""Tasks: configuration, per-task metrics with known answers, and the combined loss."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL
from tokenizers import Tokenizer
from torchmetrics.functional.retrieval import retrieval_recall as tm_recall

from multimodal_doubleloop.data.batching import collate, encoded_split
from multimodal_doubleloop.data.images import InMemoryImages
from multimodal_doubleloop.data.tokenizer import encode, train_tokenizer
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.models.heads import ContrastiveOutput
from multimodal_doubleloop.tasks import (
    TaskConfig,
    TaskContext,
    TasksConfig,
    TaskSet,
    special_ids,
    task_metrics,
)
from multimodal_doubleloop.tasks.caption import CaptionTask
from multimodal_doubleloop.tasks.classification import ClassificationTask
from multimodal_doubleloop.tasks.contrastive import ContrastiveTask
from multimodal_doubleloop.tasks.metrics import bleu, cider_d, retrieval_recall
from multimodal_doubleloop.tasks.multilabel import MultilabelTask
from multimodal_doubleloop.tasks.regression import RegressionTask
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.evaluate import evaluate
from multimodal_doubleloop.training.loop import train

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


# --- configuration ----------------------------------------------------------------


def test_tasks_config_checks_names_fields_and_types():
    cfg = TasksConfig.from_dict({"active": "b+a", "definitions": {"a": {"type": "caption"}, "b": {}}})
    assert cfg.active == ["b", "a"] and cfg.definitions["b"].target == "answer"
    with pytest.raises(ValueError, match=r"unknown: \['c'\]"):
        TasksConfig.from_dict({"active": ["c"], "definitions": {"a": {}}})
    with pytest.raises(ValueError, match=r"does not read \['beam_size'\]"):
        TasksConfig.from_dict({"active": ["a"], "definitions": {"a": {"type": "regression", "target": "x", "beam_size": 3}}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['taget'\] in tasks.definitions.a"):
        TasksConfig.from_dict({"active": ["a"], "definitions": {"a": {"type": "regression", "taget": "x"}}})
    with pytest.raises(ValueError, match="needs `target`"):
        TaskConfig("multilabel")


# --- training on a toy table --------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    """8 images, each with two questions and one caption; derived per-image columns."""
    rng = np.random.default_rng(0)
    colors, shapes = ["red", "blue"], ["circle", "square"]
    rows = []
    for i in range(8):
        color, shape = colors[i % 2], shapes[(i // 2) % 2]
        split = "train" if i < 6 else "test"
        base = {"image_id": f"img{i}", "image_path": f"/x/{i}.png", "split": split, "source": "toy",
                "color": color, "shape": shape, "coverage": float(rng.uniform(0.1, 0.3)),
                "color_shape": f"{color} {shape}"}
        rows.append({**base, "text": "what color is it?", "answer": color, "question_type": "color"})
        rows.append({**base, "text": "what shape is it?", "answer": shape, "question_type": "shape"})
        rows.append({**base, "text": f"a {color} {shape}", "answer": "", "question_type": "caption"})
    table = pd.DataFrame(rows)
    table.insert(0, "sample_id", [f"s{i}" for i in range(len(table))])
    tok = train_tokenizer(table["text"], vocab_size=60)
    ids, mask = encode(tok, table["text"].tolist(), 8)
    images = InMemoryImages(rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    encoded = {"input_ids": ids, "attention_mask": mask}
    return table, tok, encoded, images


ALL = ["answer", "attributes", "coverage", "retrieval", "caption"]


def _setup(toy, tasks_params, active, weighting="uncertainty"):
    table, tok, encoded, images = toy
    cfg = TasksConfig.from_dict({**tasks_params, "active": active, "weighting": weighting})
    vocab = sorted(a for a in table.loc[table.split == "train", "answer"].unique() if a)
    tasks = TaskSet.build(cfg, table, TaskContext(vocab, special_ids(tok)))
    config = resolve_model_config(copy.deepcopy(TINY_MODEL), tok.get_vocab_size(), 8, heads=tasks.head_configs)
    image_ids = [f"img{i}" for i in range(8)]
    splits = {s: tasks.attach_targets(encoded_split(table, encoded, image_ids, vocab, s), table, s) for s in ("train", "test")}
    torch.manual_seed(0)
    return tasks, build_model(ModelConfig.from_dict(config)), splits, config


@pytest.mark.parametrize("active", [[t] for t in ALL] + [ALL])
def test_each_task_trains_one_step(toy, tasks_params, active):
    tasks, model, splits, config = _setup(toy, tasks_params, active)
    assert list(config["heads"]) == active
    batch = collate(splits["train"], toy[3], np.arange(len(splits["train"])))
    result = tasks.step(model, batch)
    loss = sum(result.terms.values())
    assert torch.isfinite(loss) and result.count > 0
    loss.backward()
    for name in active:
        grads = [p.grad for p in model.heads[name].parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
    if len(active) > 1:  # uncertainty weighting: a weighted loss and a log-variance per task
        assert set(result.terms) == {*active, *(f"{t}_log_var" for t in active)}
        assert tasks.weighting.log_vars.grad is not None


def test_per_image_tasks_score_each_image_once(toy, tasks_params):
    tasks, model, splits, _ = _setup(toy, tasks_params, ["coverage", "answer"])
    batch = collate(splits["train"], toy[3], np.arange(len(splits["train"])))
    assert tasks.step(model, batch).count == 6  # the primary (per-image) task: 6 images, 18 rows


def test_text_is_read_only_by_tasks_that_need_it(toy, tasks_params, monkeypatch):
    tasks, model, splits, _ = _setup(toy, tasks_params, ["caption", "coverage"])
    seen = {}
    original = model.features
    monkeypatch.setattr(model, "features", lambda **kw: seen.update(kw) or original(**kw))
    tasks.step(model, collate(splits["train"], toy[3], np.arange(6)))
    assert "input_ids" not in seen  # the caption is the target: the model must not read it


def test_multi_task_train_and_evaluate(toy, tasks_params, tmp_path):
    tasks, model, splits, _ = _setup(toy, tasks_params, ALL)
    cfg = TrainConfig(epochs=3, images_per_batch=2, warmup_steps=1, checkpoint_dir=str(tmp_path),
                      checkpoint_every=0, progress_bar=False, log_every=1)
    state = train(model, splits["train"], splits["test"], toy[3], cfg, {}, tasks)
    assert len(state.history) == 3 and all(np.isfinite(r["val_loss"]) for r in state.history)
    assert tasks.weights() != {t: 1.0 for t in ALL}  # the loss weights were trained
    result = evaluate(model, splits["test"], toy[3], cfg, tasks)
    table, tok = toy[0], toy[1]
    context = {
        "image_ids": [f"img{i}" for i in range(8)],
        "decode": lambda ids: tok.decode(ids, skip_special_tokens=True),
        "encode_text": lambda name, texts: torch.nn.functional.normalize(torch.ones(len(texts), 32), dim=-1),
    }
    metrics = task_metrics(tasks, result, table[table.split == "test"].reset_index(drop=True), context)
    for key in ("answer_accuracy", "attributes_map", "coverage_rmse", "retrieval_i2t_recall_at_1",
                "retrieval_zero_shot_accuracy", "caption_cider_d", "caption_exact_match", "loss"):
        assert np.isfinite(metrics[key]), key
    assert metrics["retrieval_images"] == 2 and metrics["caption_images"] == 2


def test_image_folder_classification_reads_the_image_only(tasks_params):
    table = pd.DataFrame(
        {"answer": ["cat", "dog"], "question_type": "class", "split": "train", "image_id": ["a", "b"],
         "text": ["a photo of a cat", "a photo of a dog"]}
    )
    tok = Tokenizer.from_str(train_tokenizer(table["text"], vocab_size=40).to_str())
    with pytest.raises(ValueError, match=r"lacks .*drop the task from tasks.active"):  # easy-VQA's attributes
        TaskSet.build(TasksConfig.from_dict({**tasks_params, "active": ["answer", "attributes"]}), table, TaskContext(["cat", "dog"], special_ids(tok)))
    only_answer = TasksConfig.from_dict({**tasks_params, "active": ["answer"]})
    tasks = TaskSet.build(only_answer, table, TaskContext(["cat", "dog"], special_ids(tok)))
    heads = tasks.head_configs({"answer": {"type": "classification", "hidden": 8}}, {})
    assert heads["answer"]["input"] == "image"  # the prompt names the answer
    with pytest.raises(ValueError, match="names the answer"):
        tasks.head_configs({"answer": {"input": "fused"}}, {})


class _FixedHead(torch.nn.Module):
    """A contrastive head stub returning fixed embeddings."""

    def __init__(self, image_embeds, text_embeds, scale):
        super().__init__()
        from multimodal_doubleloop.models.heads import HeadConfig

        self.cfg = HeadConfig(type="contrastive", num_outputs=image_embeds.shape[1])
        self.out = ContrastiveOutput(image_embeds, text_embeds, torch.tensor(scale), None)

    def forward(self, features):
        return self.out


def test_contrastive_loss_counts_equal_texts_of_other_images_as_positives():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    texts[2] = texts[0]  # images 0 and 2 have the same caption (text id 7)
    batch = {"image_index": torch.arange(4), "target.r": torch.tensor([7, 3, 7, 5])}
    task = ContrastiveTask("r", TaskConfig("contrastive"), [])
    step = task.loss(_FixedHead(images, texts, 10.0), None, batch)
    terms, hits, count = step.terms, step.hits, step.count
    # direct multi-positive InfoNCE: image -> its caption among the 3 distinct ones;
    # each distinct caption -> all images that have it, equally
    distinct = texts[[0, 1, 3]]  # ids 7, 3, 5
    logits = 10.0 * images @ distinct.t()  # (4 images, 3 texts)
    i2t = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 2]))
    target = torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    t2i = torch.nn.functional.cross_entropy(logits.t(), target)
    assert float(terms["contrastive_i2t"]) == pytest.approx(0.5 * float(i2t), rel=1e-5)
    assert float(terms["contrastive_t2i"]) == pytest.approx(0.5 * float(t2i), rel=1e-5)
    assert count == 4


def test_contrastive_loss_without_duplicates_is_plain_clip():
    from multimodal_doubleloop.models.losses import contrastive_loss

    g = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    batch = {"image_index": torch.arange(3), "target.r": torch.tensor([0, 1, 2])}
    terms = ContrastiveTask("r", TaskConfig("contrastive"), []).loss(_FixedHead(images, texts, 5.0), None, batch).terms
    clip = contrastive_loss(images, texts, torch.tensor(5.0))
    assert float(sum(terms.values())) == pytest.approx(float(sum(clip.values())), rel=1e-6)
