"""Task types on a toy table: one training step each, the combined loss, evaluation."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL
from tokenizers import Tokenizer

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
from multimodal_doubleloop.tasks.contrastive import ContrastiveTask
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.evaluate import evaluate
from multimodal_doubleloop.training.loop import train

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


def _setup(toy, tasks_params, active, weighting="uncertainty", heads=None, label_smoothing=0.0):
    table, tok, encoded, images = toy
    cfg = TasksConfig.from_dict({**tasks_params, "active": active, "weighting": weighting})
    vocab = sorted(a for a in table.loc[table.split == "train", "answer"].unique() if a)
    tasks = TaskSet.build(cfg, table, TaskContext(vocab, special_ids(tok), label_smoothing))
    model_params = copy.deepcopy(TINY_MODEL)
    model_params["presets"]["tiny"]["heads"].update(heads or {})
    config = resolve_model_config(model_params, tok.get_vocab_size(), 8, heads=tasks.head_configs)
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
    with pytest.raises(ValueError, match=r"task 'attributes' reads .* lacks .*drop it from tasks.active"):  # easy-VQA's
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
    terms, count = step.terms, step.count
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


@pytest.mark.parametrize(
    "heads",
    [
        {"answer": {"type": "classification", "hidden": 32, "loss": "focal"}, "coverage": {"loss": "l1"}},
        {"answer": {"type": "classification", "hidden": 32, "label_smoothing": 0.2}},
    ],
    ids=["focal+l1", "smoothing"],
)
def test_evaluation_loss_is_the_training_objective(toy, tasks_params, heads):
    """Validation loss picks best.pt and feeds the controller: it must be the loss trained."""
    tasks, model, splits, _ = _setup(toy, tasks_params, ["answer", "coverage"], heads=heads)
    model.eval()
    with torch.no_grad():  # confident, wrong-ish logits, where focal and smoothing differ from plain CE
        for p in model.heads["answer"].parameters():
            p.mul_(6.0)
    batch = collate(splits["test"], toy[3], np.arange(len(splits["test"])))
    idx = torch.arange(len(splits["test"]))
    with torch.no_grad():
        features = tasks.features(model, batch)
        for task in tasks.tasks:
            head = model.heads[task.name]
            trained = float(sum(task.loss(head, features, batch).terms.values()))
            scored = task.evaluate(head, features, batch, idx)
            assert scored.count > 0
            assert scored.loss_sum / scored.count == pytest.approx(trained, rel=1e-6), task.name
    labels = batch["labels"]
    logits = model.heads["answer"](features).float()
    plain = float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-1))
    evaluated = tasks.tasks[0].evaluate(model.heads["answer"], features, batch, idx)
    assert evaluated.loss_sum / evaluated.count != pytest.approx(plain, rel=1e-3)  # not plain CE


def test_a_head_can_set_label_smoothing_to_zero(toy, tasks_params):
    """training.label_smoothing is the default; a head that sets 0 trains without smoothing."""
    losses = {}
    for name, head in (("default", {}), ("zero", {"label_smoothing": 0.0})):
        answer = {"answer": {"type": "classification", "hidden": 32, **head}}
        tasks, model, splits, _ = _setup(toy, tasks_params, ["answer"], heads=answer, label_smoothing=0.3)
        batch = collate(splits["train"], toy[3], np.arange(len(splits["train"])))
        with torch.no_grad():  # confident logits, where smoothing makes a difference
            for p in model.heads["answer"].parameters():
                p.mul_(6.0)
        features = tasks.features(model, batch)
        losses[name] = float(sum(tasks.tasks[0].loss(model.heads["answer"], features, batch).terms.values()))
        logits = model.heads["answer"](features).float()
        losses[f"{name}_expected"] = float(
            torch.nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=0.3 if not head else 0.0,
                                              ignore_index=-1)
        )
    assert losses["default"] == pytest.approx(losses["default_expected"], rel=1e-6)
    assert losses["zero"] == pytest.approx(losses["zero_expected"], rel=1e-6)
    assert losses["zero"] != pytest.approx(losses["default"], rel=1e-3)


def test_metric_keys_have_one_shape_whatever_the_number_of_tasks(toy, tasks_params):
    context = {
        "image_ids": [f"img{i}" for i in range(8)],
        "decode": lambda ids: toy[1].decode(ids, skip_special_tokens=True),
        "encode_text": lambda name, texts: torch.nn.functional.normalize(torch.ones(len(texts), 32), dim=-1),
    }
    table = toy[0][toy[0].split == "test"].reset_index(drop=True)
    keys = {}
    for active in (["answer"], ["answer", "attributes"]):
        tasks, model, splits, _ = _setup(toy, tasks_params, active)
        result = evaluate(model, splits["test"], toy[3], TrainConfig(images_per_batch=2), tasks)
        keys[len(active)] = set(task_metrics(tasks, result, table, context))
    assert {"answer_accuracy", "answer_macro_f1", "answer_loss", "loss", "accuracy"} <= keys[1]
    assert keys[1] <= keys[2]  # a second task only adds its own keys
    assert {k for k in keys[2] - keys[1]} == {k for k in keys[2] if k.startswith("attributes_")}
