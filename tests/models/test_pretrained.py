"""Pretrained weights: our towers compute what timm's ViT and transformers' BERT compute
on the same checkpoint, the load report names every key left out, and the config
fields that pretrained towers need (norm eps, post-norm, pixel normalisation,
output_dim) leave default towers as they were.

The reference models come from the real libraries (the dev extra; CI runs these) at
tiny sizes, with every parameter perturbed so that a swapped or skipped tensor shows.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import save_file

from multimodal_doubleloop.models import ModelConfig, build_model
from multimodal_doubleloop.models.pretrained import (
    TIMM_VIT_HEADS,
    LoadReport,
    bert_text_config,
    load_hf_bert,
    load_timm_vit,
    read_state_dict,
    timm_vit_config,
)
from multimodal_doubleloop.models.text import TextConfig, TextEncoder
from multimodal_doubleloop.models.vision import VisionConfig, VisionTransformer

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm", reason="timm (dev extra) builds the reference ViT")


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip(
        "transformers", reason="transformers (dev extra) builds the reference BERT"
    )


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` in eval mode with noise on every parameter: the libraries initialise norms
    to 1/0 and biases to 0, which would hide a swapped or skipped tensor."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# ---------------------------------------------------------------- timm ViT


def tiny_timm(timm, img_size: int = 32, **kw) -> torch.nn.Module:
    kw = {"embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 0, **kw}
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=img_size, **kw)
    return perturbed(model)


def our_vit(state_dict: dict, **overrides) -> tuple[VisionTransformer, LoadReport]:
    torch.manual_seed(1)
    tower = VisionTransformer(VisionConfig(**{**timm_vit_config(state_dict, heads=2), **overrides}))
    return tower.eval(), load_timm_vit(tower, state_dict)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_vit_same_outputs(timm, tmp_path, fmt):
    reference = tiny_timm(timm)
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file(reference.state_dict(), path)
    state_dict = read_state_dict(path)
    config = timm_vit_config(state_dict, heads=2)
    assert config | {"mlp_ratio": 4.0} == {
        "image_size": 32, "patch_size": 16, "in_channels": 3, "dim": 64, "depth": 2, "heads": 2,
        "mlp_ratio": 4.0, "stem_channels": [], "pool": "cls", "position_embedding": "learned",
        "norm_eps": 1e-6,
    }  # fmt: skip
    tower, report = our_vit(state_dict)
    assert report.missing == [] and report.unexpected == [] and report.resized == []
    assert len(report.loaded) == len(state_dict)
    assert tower.norm.eps == tower.blocks[0].norm1.eps == 1e-6
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pooled, tokens = tower(images)
        expected = reference.forward_features(images)  # (B, 1+N, D)
    torch.testing.assert_close(pooled, expected[:, 0], **TOL)
    torch.testing.assert_close(tokens, expected[:, 1:], **TOL)


def test_timm_vit_pixel_normalisation(timm):
    """With pixel_mean/std our tower on [0, 1] images = timm on the normalised images."""
    reference = tiny_timm(timm)
    tower, _ = our_vit(reference.state_dict(), pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    images = torch.rand(2, 3, 32, 32)
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        pooled, tokens = tower(images)
        expected = reference.forward_features((images - mean) / std)
        unnormalised = reference.forward_features(images)
    torch.testing.assert_close(pooled, expected[:, 0], **TOL)
    torch.testing.assert_close(tokens, expected[:, 1:], **TOL)
    assert (pooled - unnormalised[:, 0]).abs().max() > 1e-2  # the normalisation did something
    assert "pixel_mean" not in tower.state_dict()  # config, not weights


def test_timm_vit_pos_embed_resampled_like_timm(timm):
    """A 32px checkpoint in a 64px tower = timm's own 64px model loaded through its
    checkpoint_filter_fn (bicubic, antialiased resampling of the 2x2 grid to 4x4)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state_dict = tiny_timm(timm).state_dict()
    reference = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=64,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=0,
    ).eval()
    reference.load_state_dict(checkpoint_filter_fn(state_dict, reference))
    tower, report = our_vit(state_dict, image_size=64)
    assert report.resized == ["pos_embed"] and report.missing == []
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pooled, tokens = tower(images)
        expected = reference.forward_features(images)
    torch.testing.assert_close(tower.pos_embed, reference.pos_embed, **TOL)
    torch.testing.assert_close(pooled, expected[:, 0], **TOL)
    torch.testing.assert_close(tokens, expected[:, 1:], **TOL)


def test_timm_vit_report_names_unexpected_and_missing(timm):
    state_dict = tiny_timm(timm, num_classes=10).state_dict()  # with a classifier head
    del state_dict["blocks.1.norm2.weight"]
    tower, report = our_vit(state_dict)
    assert report.unexpected == ["head.bias", "head.weight"]
    assert report.missing == ["blocks.1.norm2.weight"]
    summary = report.summary()
    assert "missing 1 ['blocks.1.norm2.weight']" in summary
    assert "unexpected 2 ['head.bias', 'head.weight']" in summary


def test_timm_vit_fc_norm_variant(timm):
    """A global-average-pool ViT norms the pooled vector (fc_norm), not the tokens:
    refused by the config, and the loader names both sides of the difference."""
    state_dict = tiny_timm(timm, global_pool="avg").state_dict()
    with pytest.raises(ValueError, match=r"no final norm \(fc_norm"):
        timm_vit_config(state_dict, heads=2)
    config = timm_vit_config(tiny_timm(timm).state_dict(), heads=2)
    report = load_timm_vit(VisionTransformer(VisionConfig(**config)), state_dict)
    assert report.unexpected == ["fc_norm.bias", "fc_norm.weight"]
    assert report.missing == ["norm.bias", "norm.weight"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"reg_tokens": 4}, "register tokens"),
        ({"init_values": 1e-5}, "layer scale"),
        ({"class_token": False, "global_pool": "avg"}, "no class token"),
        ({"no_embed_class": True}, "no_embed_class"),
        ({"qk_norm": True}, "q/k norm"),
        ({"qkv_bias": False}, "qkv_bias=False"),
    ],
)
def test_timm_vit_unsupported_variants_refused(timm, kw, message):
    with pytest.raises(ValueError, match=message):
        timm_vit_config(tiny_timm(timm, **kw).state_dict(), heads=2)


def test_timm_vit_shape_mismatch_names_key_and_shapes(timm):
    state_dict = tiny_timm(timm).state_dict()
    config = {**timm_vit_config(state_dict, heads=2), "mlp_ratio": 2.0}
    tower = VisionTransformer(VisionConfig(**config))
    with pytest.raises(
        ValueError, match=r"'blocks.0.mlp.fc1.weight' has shape \(256, 64\).*\(128, 64\)"
    ):
        load_timm_vit(tower, state_dict)


def test_timm_vit_config_takes_timm_s_heads_by_width_and_needs_them_otherwise(timm):
    with pytest.raises(ValueError, match="pass heads="):
        timm_vit_config(tiny_timm(timm, embed_dim=128, num_heads=2).state_dict())
    assert timm_vit_config(tiny_timm(timm, embed_dim=192, num_heads=3).state_dict())["heads"] == 3  # ViT-Ti
    assert TIMM_VIT_HEADS[1280] == 16  # ViT-H/14: 16 heads of 80, not 1280 / 64


# ---------------------------------------------------------------- read_state_dict


def test_read_state_dict_from_bytes_files_and_wrappers(tmp_path):
    state_dict = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    save_file(state_dict, tmp_path / "w.safetensors")
    torch.save({"state_dict": state_dict, "epoch": 3}, tmp_path / "w.pt")
    torch.save({"model": state_dict}, tmp_path / "w.bin")
    sources = [
        tmp_path / "w.safetensors",
        str(tmp_path / "w.pt"),
        tmp_path / "w.bin",
        (tmp_path / "w.safetensors").read_bytes(),
        io.BytesIO((tmp_path / "w.pt").read_bytes()),
    ]
    for source in sources:
        loaded = read_state_dict(source)
        assert loaded.keys() == state_dict.keys()
        for key in state_dict:
            torch.testing.assert_close(loaded[key], state_dict[key])


def test_read_state_dict_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint suffix"):
        read_state_dict(tmp_path / "w.ckpt")
    torch.save({"a": torch.zeros(1), "step": 3}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"not tensors: \['step'\]"):
        read_state_dict(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="neither safetensors nor torch.save"):
        read_state_dict(b"hello world, not a checkpoint")


# ---------------------------------------------------------------- Hugging Face BERT


def tiny_bert(transformers, cls_name: str = "BertModel", **kw) -> torch.nn.Module:
    config = transformers.BertConfig(
        **{
            "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 128, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, **kw,
        }
    )  # fmt: skip
    torch.manual_seed(0)
    return perturbed(getattr(transformers, cls_name)(config))


def our_bert(
    folder, unpad: str = "off", max_length: int = 16
) -> tuple[TextEncoder, LoadReport, dict]:
    """Our tower from a saved folder: config.json -> config, the weights file -> load."""
    hf_config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    state_dict = read_state_dict(weights if weights.exists() else folder / "pytorch_model.bin")
    config = TextConfig(**bert_text_config(hf_config), max_length=max_length, unpad=unpad)
    torch.manual_seed(1)
    tower = TextEncoder(config).eval()
    return tower, load_hf_bert(tower, state_dict), state_dict


def padded_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([12, 7, 3])
    mask = (torch.arange(12)[None] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(1, 100, (3, 12), generator=g) * mask
    segments = ((torch.arange(12)[None] >= lengths[:, None] // 2) * mask).long()  # A then B
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}


@pytest.mark.parametrize("unpad", ["on", "off"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_bert_same_outputs(transformers, tmp_path, fmt, unpad):
    reference = tiny_bert(transformers)
    reference.save_pretrained(tmp_path)  # config.json + model.safetensors
    if fmt == "bin":  # transformers 5 writes only safetensors; v4's .bin was this state dict
        (tmp_path / "model.safetensors").unlink()
        torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    tower, report, _ = our_bert(tmp_path, unpad)
    assert tower.cfg.norm == "post" and tower.cfg.norm_eps == 1e-12
    assert isinstance(tower.norm, torch.nn.Identity)
    assert report.missing == [] and report.resized == ["pos_embed.weight"]  # 64 -> 16 rows
    assert report.unexpected == ["pooler.dense.bias", "pooler.dense.weight"]
    batch = padded_batch()
    with torch.no_grad():
        pooled, tokens = tower(**batch)
        expected = reference(**batch).last_hidden_state  # (B, T, D)
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        torch.testing.assert_close(tokens[row, :length], expected[row, :length], **TOL)
    torch.testing.assert_close(pooled, expected[:, 0], **TOL)


def test_bert_masked_lm_checkpoint_prefixed_keys(transformers, tmp_path):
    """BertForMaskedLM saves `bert.*` and its MLM head `cls.*`: the encoder loads, the
    head is named unexpected."""
    reference = tiny_bert(transformers, "BertForMaskedLM")
    reference.save_pretrained(tmp_path)
    tower, report, state_dict = our_bert(tmp_path)
    assert any(k.startswith("bert.") for k in state_dict)
    assert report.missing == []
    assert report.unexpected and all(k.startswith("cls.") for k in report.unexpected)
    assert report.unexpected == sorted(k for k in state_dict if k.startswith("cls."))
    batch = padded_batch()
    with torch.no_grad():
        _, tokens = tower(**batch)
        expected = reference.bert(**batch).last_hidden_state
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        torch.testing.assert_close(tokens[row, :length], expected[row, :length], **TOL)


def test_bert_reads_gamma_beta_layer_norm_names(transformers):
    """The original bert-base-uncased .bin names LayerNorm parameters gamma/beta."""
    reference = tiny_bert(transformers)
    state_dict = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in reference.state_dict().items()
    }
    assert "embeddings.LayerNorm.gamma" in state_dict
    tower = TextEncoder(TextConfig(**bert_text_config(reference.config.to_dict()), max_length=16))
    report = load_hf_bert(tower.eval(), state_dict)
    assert report.missing == [] and "pooler.dense.weight" in report.unexpected
    batch = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            tower(**batch)[0], reference(**batch).last_hidden_state[:, 0], **TOL
        )


def test_bert_missing_tensor_named(transformers):
    state_dict = tiny_bert(transformers).state_dict()
    del state_dict["encoder.layer.1.attention.self.key.bias"]
    tower = TextEncoder(TextConfig(**bert_text_config(tiny_bert(transformers).config.to_dict())))
    report = load_hf_bert(tower, state_dict)
    assert report.missing == ["blocks.1.attn.qkv.bias"]  # q;k;v fuse only when all are there
    assert {
        "encoder.layer.1.attention.self.query.bias",
        "encoder.layer.1.attention.self.value.bias",
    } <= set(report.unexpected)


def test_bert_max_length_beyond_checkpoint_positions(transformers):
    reference = tiny_bert(transformers)
    tower = TextEncoder(TextConfig(**bert_text_config(reference.config.to_dict()), max_length=65))
    with pytest.raises(ValueError, match=r"max_length=65 exceeds .* 64 position .* <= 64"):
        load_hf_bert(tower, reference.state_dict())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "relu"}, "hidden_act='relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"model_type": "roberta"}, "model_type='roberta'"),
    ],
)
def test_bert_config_refuses_what_the_tower_cannot_run(transformers, change, message):
    hf_config = tiny_bert(transformers).config.to_dict()
    with pytest.raises(ValueError, match=message):
        bert_text_config({**hf_config, **change})


# ---------------------------------------------------------------- config fields


def test_default_towers_keep_their_state_dict_and_norms():
    """New fields default to what the towers were: no new tensors, pre-norm, eps 1e-5."""
    vision, text = VisionTransformer(VisionConfig()), TextEncoder(TextConfig())
    assert not any(
        k.startswith(("out_proj", "pixel_")) for k in [*vision.state_dict(), *text.state_dict()]
    )
    assert isinstance(text.norm, torch.nn.LayerNorm) and not text.blocks[0].post_norm
    assert {
        m.eps for m in [*vision.modules(), *text.modules()] if isinstance(m, torch.nn.LayerNorm)
    } == {1e-5}


def test_output_dim_projects_towers_to_fusion_width():
    cfg = {
        "vision": {"image_size": 32, "patch_size": 16, "stem_channels": [], "dim": 64, "depth": 1,
                   "heads": 2, "output_dim": 32},
        "text": {"vocab_size": 50, "max_length": 8, "dim": 48, "depth": 1, "heads": 2,
                 "output_dim": 32, "norm": "post", "pool": "mean"},
        "fusion": {"kind": "early", "dim": 32, "depth": 1, "heads": 2},
        "heads": {"answer": {"type": "classification", "num_outputs": 3}},
    }  # fmt: skip
    model = build_model(ModelConfig.from_dict(cfg))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    pooled, tokens = model.text(torch.randint(1, 50, (2, 4)) * mask, mask)
    assert pooled.shape == (2, 32) and tokens.shape == (2, 4, 32)
    assert tokens[0, 3].abs().max() == 0  # padding stays zero through the projection (unpad)
    assert model.vision(torch.rand(2, 3, 32, 32))[1].shape == (2, 4, 32)
    out = model(images=torch.rand(2, 3, 32, 32), input_ids=torch.randint(1, 50, (2, 4)))
    assert out["answer"].shape == (2, 3) and torch.isfinite(out["answer"]).all()


def test_dim_mismatch_says_to_set_output_dim():
    cfg = {"vision": {"dim": 256, "heads": 4}, "text": {"dim": 128}, "fusion": {"dim": 128}}
    with pytest.raises(ValueError, match=r"model.vision.output_dim=128"):
        ModelConfig.from_dict(cfg)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: VisionConfig(pixel_mean=[0.5], pixel_std=[0.5]),
            r"pixel_mean=\[0.5\] has 1 values",
        ),
        (lambda: VisionConfig(pixel_mean=[0.5] * 3), "set both or neither"),
        (lambda: VisionConfig(pixel_mean=[0.5] * 3, pixel_std=[0.5, 0.0, 0.5]), "must be > 0"),
        (lambda: VisionConfig(output_dim=-1), "output_dim=-1"),
        (lambda: TextConfig(norm="sandwich"), "text.norm='sandwich': use 'pre' or 'post'"),
        (lambda: TextConfig(norm_eps=0.0), "norm_eps=0.0 must be > 0"),
    ],
)
def test_config_checks_name_the_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()
