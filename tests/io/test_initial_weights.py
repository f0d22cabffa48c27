"""`initial_weights`: where a run's model starts from, read through the catalog entry's
dataset (local files, `memory://`, an MLflow run), shaped into the model config and
loaded by name, with what was not loaded reported."""

from __future__ import annotations

import json

import fsspec
import mlflow
import pytest
import torch
from kedro.io import DatasetError
from kedro.io.core import Version
from kedro_datasets.text import TextDataset
from safetensors.torch import save as safetensors_bytes
from tokenizers import Tokenizer

from multimodal_doubleloop.io import InitialWeightsDataset, TorchModelDataset
from multimodal_doubleloop.models import ModelConfig, build_model
from multimodal_doubleloop.models.starting_point import StartingPoint, load_previous
from multimodal_doubleloop.training.checkpoint import save_checkpoint, save_run
from multimodal_doubleloop.training.state import TrainState

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "shape", "?", "red"]


@pytest.fixture
def previous(train_setup, tokenized):
    config, _, _ = train_setup
    torch.manual_seed(3)
    model = build_model(ModelConfig.from_dict(config))
    return {"config": config, "state_dict": model.state_dict()}, tokenized["tokenizer"]


def test_init_from_the_newest_trained_model_brings_its_tokenizer(tmp_path, previous):
    trained, tokenizer = previous
    version = "2026-12-06T17.00.00.000Z"
    TorchModelDataset(str(tmp_path / "model.pt"), version=Version(None, version)).save(trained)
    TextDataset(filepath=str(tmp_path / "tokenizer.json"), version=Version(None, version)).save(tokenizer)
    start = InitialWeightsDataset(
        init_from="trained_model", trained_model_path=str(tmp_path / "model.pt"),
        tokenizer_path=str(tmp_path / "tokenizer.json"),
    ).load()
    assert start.sources["init_from"].startswith(f"trained_model@{version} weights:") and start.tokenizer == tokenizer
    assert all(torch.equal(start.previous["state_dict"][k], v) for k, v in trained["state_dict"].items())


def test_init_from_a_training_checkpoint_reads_its_config_beside_it(tmp_path, previous):
    trained, _ = previous
    path = save_checkpoint(tmp_path / "ck", 40, {"model": trained["state_dict"], "rng": None},
                           {"config": {"model": trained["config"]}}, keep_last=2)
    start = InitialWeightsDataset(init_from=str(path)).load()
    assert start.previous["config"] == trained["config"] and start.tokenizer is None
    assert start.tokenizer_sha256 is None  # this meta records none; a real checkpoint's does (data.tokenizer_sha256)


def test_a_training_checkpoint_hands_on_its_heads(tmp_path, previous):
    """A checkpoint records its heads' class names, so a run started from it
    (`model.init_from=.../step_N.pt`) keeps the heads whose classes match."""
    trained, _ = previous
    names = [f"class{i}" for i in range(trained["config"]["heads"]["answer"]["num_outputs"])]
    model = build_model(ModelConfig.from_dict(trained["config"]))
    model.load_state_dict(trained["state_dict"])
    save_run(tmp_path / "ck", {"model": trained["config"]}, TrainState(step=40), {"model": model}, keep_last=2,
             labels={"answer": names})
    start = InitialWeightsDataset(init_from=str(tmp_path / "ck" / "step_00000040.pt")).load()
    assert start.previous["labels"] == {"answer": names}
    fresh = build_model(ModelConfig.from_dict(trained["config"]))
    report = load_previous(fresh, start.previous, {"answer": names})
    assert not report.missing and not report.unexpected
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained["state_dict"].items())


def test_init_from_an_mlflow_run(tmp_path, previous, monkeypatch):
    trained, tokenizer = previous
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        TorchModelDataset(str(tmp_path / "model.pt")).save(trained)
        (tmp_path / "tokenizer.json").write_text(tokenizer)
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "model.pt"), "model/artifacts")
            mlflow.log_artifact(str(tmp_path / "tokenizer.json"), "model/artifacts")
        start = InitialWeightsDataset(init_from=f"runs:/{run.info.run_id}/model").load()
    finally:
        mlflow.set_tracking_uri("")
    assert start.tokenizer == tokenizer and start.previous["config"] == trained["config"]


def test_a_file_that_is_no_model_is_refused_by_name(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(DatasetError, match="neither a trained-model file"):
        InitialWeightsDataset(init_from=str(path)).load()


def _bert_dir(url: str, dim: int = 48) -> None:
    """A BERT directory as Hugging Face lays it out (config.json, model.safetensors,
    vocab.txt), written with fsspec; the weights are random, in BERT's names."""
    cfg = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": dim, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 2 * dim, "max_position_embeddings": 64,
           "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0,
           "position_embedding_type": "absolute"}
    torch.manual_seed(0)
    sd = {"embeddings.word_embeddings.weight": torch.randn(len(VOCAB), dim),
          "embeddings.position_embeddings.weight": torch.randn(64, dim),
          "embeddings.token_type_embeddings.weight": torch.randn(2, dim),
          "embeddings.LayerNorm.weight": torch.ones(dim), "embeddings.LayerNorm.bias": torch.zeros(dim)}
    layer = "encoder.layer.0."
    for name, shape in [("attention.self.query", (dim, dim)), ("attention.self.key", (dim, dim)),
                        ("attention.self.value", (dim, dim)), ("attention.output.dense", (dim, dim)),
                        ("intermediate.dense", (2 * dim, dim)), ("output.dense", (dim, 2 * dim))]:
        sd[f"{layer}{name}.weight"], sd[f"{layer}{name}.bias"] = torch.randn(shape) * 0.05, torch.zeros(shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        sd[f"{layer}{name}.weight"], sd[f"{layer}{name}.bias"] = torch.ones(dim), torch.zeros(dim)
    sd["pooler.dense.weight"], sd["pooler.dense.bias"] = torch.randn(dim, dim), torch.zeros(dim)
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/config.json", json.dumps(cfg).encode())
    fs.pipe_file(f"{root}/model.safetensors", safetensors_bytes(sd))
    fs.pipe_file(f"{root}/vocab.txt", "\n".join(VOCAB).encode())


def test_a_bert_directory_on_any_filesystem_gives_its_tokenizer_and_shapes_the_text_tower(train_setup):
    _bert_dir("memory://models/bert")
    start = InitialWeightsDataset(text="memory://models/bert").load()
    tok = Tokenizer.from_str(start.tokenizer)
    assert tok.encode("What color is the shape?").tokens == ["[CLS]", "what", "color", "is", "the", "shape", "?", "[SEP]"]
    config, _, _ = train_setup
    config = {**config, "text": {**config["text"], "vocab_size": len(VOCAB)}}
    shaped = start.model_config(config)
    assert shaped["text"]["norm"] == "post" and shaped["text"]["dim"] == 48
    assert shaped["text"]["output_dim"] == config["fusion"]["dim"]  # 48 wide -> a Linear to fusion
    model = build_model(ModelConfig.from_dict(shaped))
    report = start.apply(model)["text"]
    assert "pooler.dense.weight" in report.unexpected and "out_proj.weight" in report.missing
    assert torch.equal(model.text.token_embed.weight, start.text["embeddings.word_embeddings.weight"])


def test_a_tokenizer_that_does_not_match_the_bert_weights_is_refused(train_setup):
    _bert_dir("memory://models/bert2")
    start = InitialWeightsDataset(text="memory://models/bert2").load()
    config, _, _ = train_setup  # its own tokenizer's vocabulary, not BERT's
    with pytest.raises(ValueError, match="vocab_size=12 but its tokenizer has"):
        start.model_config(config)


def test_a_previous_run_hands_on_towers_and_fusion_and_heads_whose_classes_match(previous):
    trained, _ = previous
    n = trained["config"]["heads"]["answer"]["num_outputs"]
    names = [f"class{i}" for i in range(n)]
    model = build_model(ModelConfig.from_dict(trained["config"]))
    same = load_previous(model, {**trained, "labels": {"answer": names}}, {"answer": names})
    assert not same.missing and all(torch.equal(model.state_dict()[k], v) for k, v in trained["state_dict"].items())
    # the same number of classes in another order: the head starts at init
    model = build_model(ModelConfig.from_dict(trained["config"]))
    report = load_previous(model, {**trained, "labels": {"answer": names}}, {"answer": names[::-1]})
    assert report.missing and all(k.startswith("heads.answer.") for k in report.missing)
    for key, value in trained["state_dict"].items():
        if value.ndim >= 2:  # random at init (norms start at ones either way)
            assert torch.equal(model.state_dict()[key], value) == (not key.startswith("heads.")), key


def test_a_previous_tower_that_does_not_fit_fails_by_name(previous):
    trained, _ = previous
    config = json.loads(json.dumps(trained["config"]))
    config["fusion"]["depth"] += 1  # a fusion layer the previous run does not have
    model = build_model(ModelConfig.from_dict(config))
    with pytest.raises(ValueError, match=r"do not fit this model: \['fusion\."):
        load_previous(model, trained, {})


def test_a_previous_text_tower_needs_the_tokenizer_it_was_trained_with(samples, images, tokenized, model_params, training_params):
    from multimodal_doubleloop.data.tokenizer import fingerprint
    from multimodal_doubleloop.pipelines.training.nodes import prepare_training

    args = (samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"],
            tokenized["tokenizer"], model_params, training_params, None)
    config = prepare_training(*args).model_config
    trained = {"config": config, "state_dict": build_model(ModelConfig.from_dict(config)).state_dict()}
    recorded = StartingPoint(previous=trained, tokenizer_sha256=fingerprint(tokenized["tokenizer"]))
    prepare_training(*args, start=recorded)  # a checkpoint that records this tokenizer
    with pytest.raises(ValueError, match="tokenizer it does not record"):
        prepare_training(*args, start=StartingPoint(previous=trained, requested={"init_from": "x.pt"}))
    with pytest.raises(ValueError, match="another tokenizer"):
        prepare_training(*args, start=StartingPoint(previous=trained, tokenizer_sha256="0" * 64))


def test_the_starting_point_joins_the_run_identity(samples, images, tokenized, model_params, training_params):
    from multimodal_doubleloop.pipelines.training.nodes import prepare_training

    args = (samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"],
            tokenized["tokenizer"], model_params, training_params, None)
    plain = prepare_training(*args)
    assert "init" not in plain.run_config and prepare_training(*args, start=StartingPoint()).run_config == plain.run_config
    trained = {"config": plain.model_config, "state_dict": build_model(ModelConfig.from_dict(plain.model_config)).state_dict()}
    start = StartingPoint(previous=trained, tokenizer=tokenized["tokenizer"], sources={"init_from": "trained_model@v1"})
    assert prepare_training(*args, start=start).run_config["init"] == {"init_from": "trained_model@v1"}


def test_parameters_and_catalog_must_agree_on_the_starting_point():
    from multimodal_doubleloop.pipelines.parameters import check_parameters, check_starting_point

    entry = {"type": "CachedDataset", "dataset": {"init_from": "", "vision": "", "text": ""}}
    check_starting_point({"init_from": "", "pretrained": {"vision": "", "text": ""}}, entry)
    with pytest.raises(ValueError, match=r"--params model.init_from"):  # in a parameters file only
        check_starting_point({"init_from": "trained_model"}, entry)
    with pytest.raises(ValueError, match=r"model.pretrained.text='' in the parameters.*reads 'dir'"):  # catalog only
        check_starting_point({"pretrained": {"text": ""}}, {"dataset": {"text": "dir"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['init_fom'\] in model"):
        check_parameters({"model": {"preset": "cpu", "presets": {"cpu": {}}, "init_fom": "x"}})
