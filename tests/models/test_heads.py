"""Task heads: shapes, training, modality errors, config checks, caption decoding."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal_doubleloop.models import HeadConfig, ModelConfig
from multimodal_doubleloop.models.heads import ContrastiveOutput
from multimodal_doubleloop.models.losses import UncertaintyWeighting, head_loss, total

from .tiny import VOCAB, tiny_batch, tiny_config, tiny_model

BOS, EOS, PAD = 5, 6, 0
HEADS = {
    "answer": {"type": "classification", "num_outputs": 5, "hidden": 16},
    "count": {"type": "regression", "num_outputs": 1, "hidden": 16},
    "tags": {"type": "multilabel", "num_outputs": 4, "hidden": 0},
    "match": {"type": "contrastive", "num_outputs": 16},
    "caption": {
        "type": "caption",
        "num_outputs": VOCAB,
        "decoder_depth": 2,
        "decoder_heads": 2,
        "max_length": 8,
    },
}


def captions(rows: int, seed: int = 0) -> torch.Tensor:
    """[BOS] w1 .. wn [EOS] [PAD]..., ragged lengths, (rows, 8)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, VOCAB, (rows, 8), generator=g)
    ids[:, 0] = BOS
    for row in range(rows):
        end = 2 + row % 5  # position of EOS: 2..6
        ids[row, end] = EOS
        ids[row, end + 1 :] = PAD
    return ids


def targets(rows: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "answer": torch.randint(0, 5, (rows,), generator=g),
        "count": torch.randn(rows, generator=g),
        "tags": torch.randint(0, 2, (rows, 4), generator=g).float(),
        "match": None,
        "caption": captions(rows, seed),
    }


def train_batch(rows: int = 8) -> dict:
    """Image-major batch for training tests. Each question starts with its own token:
    with a constant [CLS] every text pools to nearly the same vector at init (attention
    is near uniform under the 0.02 init), and contrastive training can collapse onto
    that saddle before the text tower learns to route words into [CLS]."""
    batch = tiny_batch(images=rows // 2, texts=rows)
    batch["input_ids"][:, 0] = torch.arange(rows) + 10
    return batch


def run_heads(model, batch: dict, caption_ids: torch.Tensor | None, names) -> dict:
    """Features once, every head on them; the caption head is teacher-forced."""
    feats = model.features(**batch)
    return {
        name: model.heads[name](feats, caption_ids)
        if name == "caption"
        else model.heads[name](feats)
        for name in names
    }


def test_all_heads_at_once_shapes_and_backward():
    model = tiny_model(heads=HEADS)
    batch, y = tiny_batch(images=3, texts=5), targets(5)
    out = run_heads(model, batch, y["caption"], HEADS)
    assert out["answer"].shape == (5, 5)
    assert out["count"].shape == (5,)
    assert out["tags"].shape == (5, 4)
    match = out["match"]
    assert isinstance(match, ContrastiveOutput)
    assert match.image_embeds.shape == (3, 16) and match.text_embeds.shape == (5, 16)
    torch.testing.assert_close(match.image_embeds.norm(dim=-1), torch.ones(3))
    assert out["caption"].shape == (5, 8, VOCAB)
    cfgs = ModelConfig.from_dict(tiny_config(heads=HEADS)).heads
    terms = {}
    for name in HEADS:
        for term, value in head_loss(cfgs[name], out[name], y[name]).items():
            terms[f"{name}/{term}"] = value
    assert len(terms) == 6  # contrastive has two directions
    loss = total(terms)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("kind", ["early", "late", "hybrid"])
def test_each_head_trains_with_falling_loss(name, kind):
    model = tiny_model(kind, heads={name: HEADS[name]})
    cfg = ModelConfig.from_dict(tiny_config(kind, heads={name: HEADS[name]})).heads[name]
    batch, y = train_batch(), targets(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = run_heads(model, batch, y["caption"], [name])[name]
        loss = total(head_loss(cfg, out, y[name]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.6 * losses[0], losses


def test_multitask_uncertainty_weighting_trains_every_head():
    model = tiny_model(heads=HEADS)
    cfgs = ModelConfig.from_dict(tiny_config(heads=HEADS)).heads
    weighting = UncertaintyWeighting(list(HEADS))
    opt = torch.optim.AdamW([*model.parameters(), *weighting.parameters()], lr=3e-3)
    batch, y = train_batch(), targets(8)
    first = last = None
    for _ in range(30):
        out = run_heads(model, batch, y["caption"], HEADS)
        per_task = {n: total(head_loss(cfgs[n], out[n], y[n])) for n in HEADS}
        loss = total(weighting(per_task))
        opt.zero_grad()
        loss.backward()
        opt.step()
        raw = {n: v.item() for n, v in per_task.items()}
        first = first or raw
        last = raw
    for n in HEADS:
        assert last[n] < first[n], (n, first[n], last[n])
    assert weighting.log_vars.grad is not None


def test_image_only_and_text_only_heads():
    batch = tiny_batch()
    image_only = {"images": batch["images"]}
    text_only = {k: batch[k] for k in ("input_ids", "attention_mask")}
    heads = {
        "fused": {"type": "classification", "num_outputs": 3, "hidden": 8},
        "img": {"type": "classification", "num_outputs": 3, "hidden": 8, "input": "image"},
        "txt": {"type": "regression", "num_outputs": 2, "hidden": 8, "input": "text"},
    }
    model = tiny_model(heads=heads)
    out = model(tasks=["fused", "img"], **image_only)
    assert out["fused"].shape == (3, 3) and out["img"].shape == (3, 3)
    out = model(tasks=["fused", "txt"], **text_only)
    assert out["fused"].shape == (5, 3) and out["txt"].shape == (5, 2)
    with pytest.raises(ValueError, match=r"classification head \(input='image'\) needs images"):
        model(tasks=["img"], **text_only)
    with pytest.raises(ValueError, match=r"regression head \(input='text'\) needs text"):
        model(tasks=["txt"], **image_only)


@pytest.mark.parametrize("present", ["image", "text"])
def test_contrastive_head_needs_both_modalities(present):
    model = tiny_model(heads={"match": HEADS["match"]})
    batch = tiny_batch()
    if present == "image":
        batch, missing = {"images": batch["images"]}, "text"
    else:
        batch, missing = {k: batch[k] for k in ("input_ids", "attention_mask")}, "images"
    with pytest.raises(ValueError, match=f"contrastive head .* needs {missing}"):
        model(**batch)


def test_caption_on_image_tokens_needs_images():
    model = tiny_model(heads={"caption": {**HEADS["caption"], "input": "image"}})
    batch = tiny_batch()
    feats = model.features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with pytest.raises(ValueError, match="caption head .* needs images"):
        model.heads["caption"](feats, captions(5))


def test_pooled_image_head_gathers_per_question():
    model = tiny_model(
        heads={"img": {"type": "classification", "num_outputs": 3, "input": "image"}}
    )
    batch = tiny_batch(images=3, texts=7)
    feats = model.features(**batch)
    expected = model.heads["img"].net(feats.image_pooled)[batch["image_index"]]
    torch.testing.assert_close(model.heads["img"](feats), expected)


def test_contrastive_logit_scale_is_learnable_and_clamped():
    model = tiny_model(heads={"match": HEADS["match"]})
    head, batch = model.heads["match"], tiny_batch()
    out = model(**batch)["match"]
    torch.testing.assert_close(out.logit_scale, torch.tensor(1 / 0.07))
    with torch.no_grad():
        head.logit_scale.fill_(10.0)  # exp(10) would be far past the ceiling
    assert model(**batch)["match"].logit_scale.item() == pytest.approx(100.0)
    with torch.no_grad():
        head.logit_scale.fill_(-3.0)
    assert model(**batch)["match"].logit_scale.item() == pytest.approx(1.0)
    with torch.no_grad():
        head.logit_scale.fill_(3.0)
    cfg = HeadConfig(**HEADS["match"])
    total(head_loss(cfg, model(**batch)["match"])).backward()
    assert head.logit_scale.grad is not None and head.logit_scale.grad != 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"type": "segmentation"}, "head type"),
        ({"type": "regression", "label_smoothing": 0.1}, "does not read .*label_smoothing"),
        ({"type": "contrastive", "hidden": 64}, "does not read .*hidden"),
        ({"type": "classification", "decoder_depth": 4}, "does not read .*decoder_depth"),
        ({"type": "classification", "loss": "mse"}, "loss='mse' does not fit"),
        ({"type": "classification", "input": "audio"}, "input='audio'"),
        ({"type": "caption", "num_outputs": 60, "input": "text"}, "input='text' is not supported"),
        ({"type": "caption", "num_outputs": 60, "eos_id": 5}, "distinct ids"),
        ({"type": "caption", "num_outputs": 6}, "below num_outputs"),
        ({"type": "contrastive", "init_temperature": 0.001}, "init_temperature"),
        ({"num_outputs": 0}, "num_outputs"),
    ],
)
def test_head_config_fails_loudly(bad, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**bad)


def test_existing_head_yaml_still_parses():
    cfg = HeadConfig(**{"type": "classification", "hidden": 256, "num_outputs": 13})
    assert cfg.loss_kind == "ce" and cfg.input == "fused"


# --- caption decoder -------------------------------------------------------------------


def caption_model(seed: int = 0, **head):
    return tiny_model(heads={"caption": {**HEADS["caption"], **head}}, seed=seed)


@pytest.mark.parametrize("memory", ["fused", "image"])
def test_caption_decoder_is_causal(memory):
    model = caption_model(input=memory).eval()
    feats = model.features(**tiny_batch())
    ids = captions(5)
    logits = model.heads["caption"](feats, ids)
    changed = ids.clone()
    changed[:, 4:] = 9  # rewrite the future
    logits2 = model.heads["caption"](feats, changed)
    torch.testing.assert_close(logits[:, :4], logits2[:, :4])
    assert (logits[:, 4:] - logits2[:, 4:]).abs().max() > 1e-4


def test_caption_forward_needs_ids_and_fits_max_length():
    model = caption_model()
    feats = model.features(**tiny_batch())
    with pytest.raises(ValueError, match="needs caption_ids"):
        model(tasks=["caption"], **tiny_batch())
    with pytest.raises(ValueError, match="max_length=8"):
        model.heads["caption"](feats, torch.full((5, 9), BOS))
    with pytest.raises(ValueError, match="max_length"):
        model.heads["caption"].greedy(feats, max_length=9)


def train_caption(memory: str, steps: int, images: int, texts: int):
    model = caption_model(input=memory)
    batch, ids = tiny_batch(images=images, texts=texts), captions(texts)
    cfg = HeadConfig(**{**HEADS["caption"], "input": memory})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        feats = model.features(**batch)
        loss = total(head_loss(cfg, model.heads["caption"](feats, ids), ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, model.features(**batch), ids, loss.item()


@pytest.mark.parametrize("memory", ["fused", "image"])
def test_caption_beam_one_equals_greedy(memory):
    # Partly trained: outputs vary by sample and end at different steps.
    model, feats, _, _ = train_caption(memory, steps=20, images=3, texts=6)
    head = model.heads["caption"]
    greedy = head.greedy(feats)
    assert greedy.shape[0] == 6 and greedy.shape[1] <= 7
    assert len(set(greedy[:, 0].tolist())) > 1  # not one constant output
    ended = (greedy == EOS).any(1)
    assert ended.any()
    for row in greedy[ended].tolist():  # [PAD] only, after [EOS]
        assert set(row[row.index(EOS) + 1 :]) <= {PAD}
    assert torch.equal(head.beam(feats, beam_size=1), greedy)
    short = head.greedy(feats, max_length=3)  # [BOS] + at most 2 tokens
    assert short.shape[1] <= 2
    assert torch.equal(short, greedy[:, : short.shape[1]])


@pytest.mark.parametrize("memory", ["fused", "image"])
def test_caption_learns_and_decodes_its_captions(memory):
    """Teacher forcing memorises one caption per image; greedy and beam then
    reproduce them, ragged lengths and [EOS] included."""
    model, feats, ids, loss = train_caption(memory, steps=150, images=4, texts=4)
    assert loss < 0.05
    want = ids[:, 1:]  # generated ids leave out [BOS]
    head = model.heads["caption"]
    for out in (head.greedy(feats), head.beam(feats, 3)):
        assert torch.equal(out, want[:, : out.shape[1]])
        assert out.shape[1] == 5  # the longest caption: 4 words and [EOS], then it stops


def test_model_forward_runs_every_head_the_inputs_allow():
    model = tiny_model(heads=HEADS).eval()
    batch, y = tiny_batch(images=3, texts=5), targets(5)
    with_captions = model(**batch, caption_ids=y["caption"])
    assert set(with_captions) == set(HEADS)
    torch.testing.assert_close(with_captions["caption"], run_heads(model, batch, y["caption"], ["caption"])["caption"])
    assert set(model(**batch)) == set(HEADS) - {"caption"}  # no captions: nothing to teacher-force
    with pytest.raises(ValueError, match="needs caption_ids"):
        model(tasks=["caption"], **batch)
    with pytest.raises(ValueError, match="unknown task head"):
        model(tasks=["captions"], **batch)


def test_grad_checkpointing_reaches_the_caption_decoder():
    model = tiny_model(heads=HEADS)
    model.set_grad_checkpointing(True)
    assert model.heads["caption"].grad_checkpointing
    batch, y = tiny_batch(images=3, texts=5), targets(5)
    torch.manual_seed(1)
    checkpointed = model(tasks=["caption"], caption_ids=y["caption"], **batch)["caption"]
    checkpointed.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(False)
    plain = model(tasks=["caption"], caption_ids=y["caption"], **batch)["caption"]
    plain.square().mean().backward()
    torch.testing.assert_close(checkpointed, plain)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, msg=name)
