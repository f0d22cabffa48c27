import base64
import copy

import numpy as np
import pytest
import torch
from conftest import run_pipeline
from mlflow.exceptions import MlflowException
from tokenizers import Tokenizer

from multimodal_doubleloop.commands.predict import format_prediction, run_inference
from multimodal_doubleloop.data.batching import encoded_split
from multimodal_doubleloop.data.image_root import ImageRoot
from multimodal_doubleloop.data.images import image_store
from multimodal_doubleloop.data.requests import encode_image_file, request_table
from multimodal_doubleloop.data.sources.easy_vqa import package_data
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.pipelines.inference import create_packaging_pipeline, create_pipeline
from multimodal_doubleloop.pipelines.inference.mlflow_model import example_request
from multimodal_doubleloop.pipelines.inference.nodes import InvalidRequestError, package_for_serving
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.evaluate import evaluate


def _model(tokenized, model_params, extra_heads=None, answer=True) -> dict:
    params = copy.deepcopy(model_params)
    params["presets"]["tiny"]["heads"].update(extra_heads or {})
    config = resolve_model_config(
        params,
        Tokenizer.from_str(tokenized["tokenizer"]).get_vocab_size(),
        tokenized["encoded_texts"]["input_ids"].shape[1],
        len(tokenized["answer_vocab"]),
    )
    if not answer:  # a `tasks.active` without the answer task
        del config["heads"]["answer"]
    torch.manual_seed(0)
    return {"config": config, "state_dict": build_model(ModelConfig.from_dict(config)).state_dict()}


def _predict(requests, model, tokenized, top_k=3):
    return run_inference(requests, model, tokenized["tokenizer"], tokenized["answer_vocab"], top_k)


def _test_requests(samples):
    test = samples[samples["split"] == "test"]
    root = ImageRoot(package_data())  # the sample table's paths are relative to it
    return test, request_table([encode_image_file(root.path(p)) for p in test["image_path"]], test["text"].tolist())


def test_predictions_match_evaluation_of_the_same_model(samples, images, tokenized, model_params, training_params):
    """Base64 requests through the inference pipeline give the probabilities that the
    evaluation path (decoded image store, encoded texts) gives for the same samples."""
    model = _model(tokenized, model_params)
    test, requests = _test_requests(samples)
    predictions = _predict(requests, model, tokenized, top_k=0)
    vocab = tokenized["answer_vocab"]
    served = np.zeros((len(test), len(vocab)))
    for i, row in predictions.iterrows():
        served[i, [vocab.index(a) for a in row["top_answers"]]] = row["top_probabilities"]

    net = build_model(ModelConfig.from_dict(model["config"]))
    net.load_state_dict(model["state_dict"])
    split = encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], vocab, "test")
    expected = evaluate(net, split, image_store(images), TrainConfig.from_dict(training_params), TaskSet.answer_only())
    np.testing.assert_allclose(served, expected["probabilities"], atol=1e-5)
    assert predictions["answer"].tolist() == [vocab[i] for i in expected["predictions"]]
    assert np.allclose(served.sum(1), 1.0, atol=1e-5)


def test_pipeline_on_memory_catalog_returns_top_k(samples, tokenized, model_params):
    _, requests = _test_requests(samples)
    catalog = run_pipeline(
        create_pipeline(),
        {
            "inference_requests": requests.head(5),
            "inference_model": _model(tokenized, model_params),
            "inference_tokenizer": tokenized["tokenizer"],
            "inference_answer_vocab": tokenized["answer_vocab"],
            "params:inference.top_k": 2,
        },
    )
    predictions = catalog.load("predictions")
    assert list(predictions.columns) == ["answer", "probability", "top_answers", "top_probabilities"]
    assert len(predictions) == 5
    for _, row in predictions.iterrows():
        assert len(row["top_answers"]) == 2 and row["top_answers"][0] == row["answer"]
        assert row["top_probabilities"][0] == row["probability"] >= row["top_probabilities"][1]
    assert catalog.load("inference_batch")["images"].shape[1:] == (64, 64, 3)


def test_packaging_writes_checked_copies_and_example_requests(samples, easy_vqa_raw, tokenized, model_params):
    model = _model(tokenized, model_params)
    catalog = run_pipeline(
        create_packaging_pipeline(),
        {
            "trained_model": model,
            "tokenizer": tokenized["tokenizer"],
            "answer_vocab": tokenized["answer_vocab"],
            "samples": samples,
            "raw_images": easy_vqa_raw[1],
            "params:inference": {"top_k": 3, "example_requests": 3},
            "params:inference.limits": {"max_rows": 2},
        },
    )
    packed = catalog.load("inference_model")
    assert packed["state_dict"] is model["state_dict"] and packed["request_limits"]["max_rows"] == 2
    requests = catalog.load("inference_requests")
    assert list(requests.columns) == ["image", "text"] and len(requests) == 3
    assert base64.b64decode(requests["image"].iloc[0]).startswith(b"\x89PNG")
    # the requests the train run writes are answerable by the model it packs
    assert len(_predict(requests.head(2), packed, tokenized)) == 2
    with pytest.raises(InvalidRequestError, match=r"3 rows, over the limit of 2 \(inference.limits.max_rows\)"):
        _predict(requests, packed, tokenized)  # the packed model serves under its limits
    with pytest.raises(ValueError, match="inference.limits=.*use the keys of RequestLimits"):
        package_for_serving(model, tokenized["tokenizer"], tokenized["answer_vocab"], {"max_pixels": 1})


def test_served_model_file_keeps_its_request_limits(tmp_path, tokenized, model_params):
    from multimodal_doubleloop.io import ServingModelDataset

    packed, _, _ = package_for_serving(_model(tokenized, model_params), tokenized["tokenizer"], tokenized["answer_vocab"], {"max_image_pixels": 5})  # fmt: skip
    dataset = ServingModelDataset(filepath=str(tmp_path / "model.pt"))
    dataset.save(packed)
    assert dataset.load().request_limits == {"max_rows": 1024, "max_image_bytes": 16 * 2**20, "max_image_pixels": 5}


def test_packaging_refuses_artifacts_of_different_runs(tokenized, model_params):
    model = _model(tokenized, model_params)
    with pytest.raises(ValueError, match=r"has \d+ classes but answer_vocab has 2 answers"):
        package_for_serving(model, tokenized["tokenizer"], ["yes", "no"])
    other = Tokenizer.from_str(tokenized["tokenizer"])
    other.add_tokens(["zebra"])
    with pytest.raises(ValueError, match="vocab_size=.* but the tokenizer has"):
        package_for_serving(model, other.to_str(), tokenized["answer_vocab"])


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("image", "%%% not base64", "row 1: column 'image' is not valid base64"),
        ("image", base64.b64encode(b"<html>not an image</html>").decode(), "not a PNG or JPEG image"),
        ("text", "", "row 1: column 'text' is empty"),
    ],
)
def test_bad_requests_raise_mlflow_400_errors(samples, tokenized, model_params, column, value, message):
    requests = example_request()
    requests = requests.loc[[0, 0]].reset_index(drop=True)
    requests.loc[1, column] = value
    with pytest.raises(InvalidRequestError, match=message) as info:
        _predict(requests, _model(tokenized, model_params), tokenized)
    assert isinstance(info.value, MlflowException) and info.value.get_http_status_code() == 400


def test_missing_column_raises_400(tokenized, model_params):
    with pytest.raises(InvalidRequestError, match=r"lack column\(s\) \['text'\]") as info:
        _predict(example_request()[["image"]], _model(tokenized, model_params), tokenized)
    assert info.value.get_http_status_code() == 400


def test_caption_and_embedding_heads_add_columns(samples, tokenized, model_params):
    vocab_size = Tokenizer.from_str(tokenized["tokenizer"]).get_vocab_size()
    heads = {
        "caption": {"type": "caption", "num_outputs": vocab_size, "decoder_depth": 1, "decoder_heads": 2, "max_length": 6},
        "clip": {"type": "contrastive", "num_outputs": 8},
    }
    _, requests = _test_requests(samples)
    predictions = _predict(requests.head(3), _model(tokenized, model_params, heads), tokenized)
    assert {"answer", "caption", "clip_image_embedding", "clip_text_embedding"} <= set(predictions.columns)
    assert all(isinstance(c, str) for c in predictions["caption"])
    for column in ("clip_image_embedding", "clip_text_embedding"):
        norms = np.linalg.norm(np.array(predictions[column].tolist()), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # unit-norm embeddings, 8 each
    assert "caption: " in format_prediction(predictions.iloc[0])


def test_models_without_an_answer_head_serve_their_own_heads(samples, tokenized, model_params):
    heads = {
        "coverage": {"type": "regression", "num_outputs": 1, "hidden": 16},
        "attributes": {"type": "multilabel", "num_outputs": 3, "hidden": 16},
    }
    model = _model(tokenized, model_params, heads, answer=False)
    _, requests = _test_requests(samples)
    predictions = _predict(requests.head(4), model, tokenized)
    assert list(predictions.columns) == ["coverage", "attributes"] and len(predictions) == 4
    assert all(isinstance(v, float) for v in predictions["coverage"])
    assert all(len(v) == 3 and all(0 < p < 1 for p in v) for v in predictions["attributes"])  # sigmoid
    text = format_prediction(predictions.iloc[0])
    assert text.startswith("coverage: ") and "attributes: " in text and "answer" not in text


def test_heads_with_class_names_answer_by_name(samples, tokenized, model_params):
    """A trained model's `labels` turn a multi-label head into the names above 0.5
    (probabilities beside them) and a second classification head into its argmax name."""
    heads = {
        "attributes": {"type": "multilabel", "num_outputs": 3, "hidden": 16},
        "kind": {"type": "classification", "num_outputs": 2, "hidden": 16},
    }
    model = _model(tokenized, model_params, heads)
    with torch.no_grad():  # one label surely on, one surely off, one at chance
        out_bias = [k for k, v in model["state_dict"].items() if k.startswith("heads.attributes.") and v.shape == (3,)]
        model["state_dict"][out_bias[-1]].copy_(torch.tensor([20.0, -20.0, 0.0]))
    model["labels"] = {"answer": list(tokenized["answer_vocab"]), "attributes": ["red", "circle", "big"], "kind": ["a", "b"]}
    _, requests = _test_requests(samples)
    predictions = _predict(requests.head(3), model, tokenized)
    assert all(names[0] == "red" and "circle" not in names for names in predictions["attributes"])
    assert all(len(p) == 3 and p[0] > 0.99 and p[1] < 0.01 for p in predictions["attributes_probabilities"])
    assert set(predictions["kind"]) <= {"a", "b"}
    text = format_prediction(predictions.iloc[0])
    assert "attributes: red" in text and "probabilities" not in text and "kind: " in text
