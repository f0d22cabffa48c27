"""Inference nodes: request table -> model batch -> head outputs -> answers.

The same nodes run in `kedro run --pipeline inference`, inside the MLflow model that
`kedro run --pipeline train` logs (kedro-mlflow's `KedroPipelineModel`), and in
`python -m multimodal_doubleloop.commands.predict`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from tokenizers import Tokenizer

from ...data.image_root import ImageRoot, images_of
from ...data.images import to_float
from ...data.requests import (
    RequestError,
    RequestLimits,
    decode_requests,
    encode_image,
    request_table,
)
from ...data.splits import require_test_rows
from ...data.tokenizer import encode
from ...models import ModelConfig
from ...models.serving import ServingModel

logger = logging.getLogger(__name__)

ANSWER_HEAD = "answer"  # the classification head whose classes are `answer_vocab`


@functools.lru_cache(maxsize=4)
def parse_tokenizer(tokenizer: str) -> Tokenizer:
    """The tokenizer of a JSON string, parsed once per string (a served model's requests
    all carry the same one)."""
    return Tokenizer.from_str(tokenizer)


class InvalidRequestError(MlflowException, RequestError):
    """A bad request. MLflow's scoring server answers it with HTTP 400 and this message
    (any other exception becomes a generic "unexpected error")."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def package_for_serving(
    trained_model: dict, tokenizer: str, answer_vocab: list[str], limits: dict | None = None
) -> tuple[dict, str, list[str]]:
    """Check that model, tokenizer and answer vocabulary belong together; returns them
    for the unversioned copies the MLflow model packs, the model with the request
    `limits` it will serve under (`inference.limits`; None = those it already has)."""
    if limits is None:
        limits = trained_model.get("request_limits")
    try:
        limits = asdict(RequestLimits(**(limits or {})))
    except TypeError as exc:
        raise ValueError(f"inference.limits={limits!r}: use the keys of RequestLimits ({exc})") from exc
    config = ModelConfig.from_dict(trained_model["config"])
    if config.vision is None or config.text is None:
        raise ValueError("serving needs a model with a vision and a text tower: requests carry both")
    answer = config.heads.get(ANSWER_HEAD)
    if answer is not None and answer.type != "classification":
        raise ValueError(f"head {ANSWER_HEAD!r} is a {answer.type} head; serving reads it as the classifier over answer_vocab")  # fmt: skip
    if answer is not None and answer.num_outputs != len(answer_vocab):
        raise ValueError(
            f"model head {ANSWER_HEAD!r} has {answer.num_outputs} classes but answer_vocab "
            f"has {len(answer_vocab)} answers: they come from different runs"
        )
    vocab_size = Tokenizer.from_str(tokenizer).get_vocab_size()
    if config.text.vocab_size != vocab_size:
        raise ValueError(
            f"model text vocab_size={config.text.vocab_size} but the tokenizer has "
            f"{vocab_size} tokens: they come from different runs"
        )
    return {**trained_model, "request_limits": limits}, tokenizer, answer_vocab


def make_example_requests(samples: pd.DataFrame, raw_images: ImageRoot, params: dict) -> pd.DataFrame:
    """The first `example_requests` test questions as a request table (base64 images
    read from `raw_images`): what the MLflow signature is inferred from and what
    `--pipeline inference` scores."""
    require_test_rows(samples, "to make example requests from")
    test = samples[samples["split"] == "test"].head(params["example_requests"])
    images, root = [], images_of(test, raw_images)
    for path in test["image_path"]:
        with root.open(path) as f:
            images.append(encode_image(f.read()))
    return request_table(images, test["text"].tolist())


def preprocess_requests(inference_requests: pd.DataFrame, inference_model: dict, inference_tokenizer: str) -> dict:
    """Validated requests -> the model batch: unique images as uint8 (M, S, S, 3), the
    image row of each text and its token ids, as training batches them. A request over
    the model's limits (`inference.limits` when it was packaged: rows, image bytes,
    image pixels) is refused before anything is decoded."""
    served = ServingModel.of(inference_model)
    config = served.model_config
    limits = RequestLimits(**served.request_limits)
    try:
        pixels, image_index, texts = decode_requests(inference_requests, config.vision.image_size, limits)
    except RequestError as exc:
        raise InvalidRequestError(str(exc)) from exc
    ids, mask = encode(parse_tokenizer(inference_tokenizer), texts, config.text.max_length)
    length = max(int(mask.sum(1).max()), 1)  # trimmed to the longest text, as in training
    return {
        "images": torch.from_numpy(pixels),  # (M, S, S, 3) uint8
        "image_index": torch.from_numpy(image_index),  # (B,)
        "input_ids": torch.as_tensor(ids[:, :length], dtype=torch.long),  # (B, T)
        "attention_mask": torch.as_tensor(mask[:, :length], dtype=torch.long),  # (B, T)
    }


def _head_output(head: torch.nn.Module, features, image_index: torch.Tensor) -> dict[str, np.ndarray]:
    kind = head.cfg.type
    if kind == "caption":
        return {"ids": head.greedy(features).cpu().numpy()}  # (B, L)
    if kind == "contrastive":
        out = head(features)
        return {
            "image_embedding": out.image_embeds[image_index].float().cpu().numpy(),  # (B, E)
            "text_embedding": out.text_embeds.float().cpu().numpy(),  # (B, E)
        }
    values = head(features).float()  # (B, C)
    if kind == "classification":
        values = values.softmax(-1)
    elif kind == "multilabel":
        values = values.sigmoid()
    return {"values": values.cpu().numpy()}


def predict(batch: dict, inference_model: ServingModel | dict) -> dict[str, dict[str, np.ndarray]]:
    """Every head of the trained model on the batch: class probabilities, caption ids
    or embeddings, keyed by head name. The network is the one `inference_model` holds
    (built when the served model loaded); a plain trained-model dict is built here."""
    served = ServingModel.of(inference_model)
    model, device = served.network, served.device
    index = batch["image_index"].to(device)
    with torch.inference_mode():
        features = model.features(
            images=to_float(batch["images"]).to(device),  # (M, 3, S, S)
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            image_index=index,
            fused_tokens=model.reads_fused_tokens(),
        )
        outputs = {name: _head_output(head, features, index) for name, head in model.heads.items()}
    for name, names in served.labels.items():
        if name in outputs and "values" in outputs[name]:
            outputs[name]["labels"] = np.asarray(names, dtype=object)  # class names of the head
            outputs[name]["multilabel"] = np.asarray(model.heads[name].cfg.type == "multilabel")
    return outputs


def postprocess_predictions(
    outputs: dict[str, dict[str, np.ndarray]],
    inference_tokenizer: str,
    inference_answer_vocab: list[str],
    top_k: int,
) -> pd.DataFrame:
    """One row per request. The `answer` head gives `answer`, its `probability` and the
    `top_k` answers with theirs (top_k <= 0: all answers); every other head of the
    trained model (`tasks.active`) adds its own: a caption's text, contrastive
    embeddings (`<head>_image_embedding`, `<head>_text_embedding`), or its values."""
    first = next(iter(outputs.values()))
    rows = len(next(iter(first.values())))
    table: dict[str, list] = {}  # column -> one value per request, made a frame once
    if ANSWER_HEAD in outputs:
        probs = outputs[ANSWER_HEAD]["values"]  # (B, C)
        k = probs.shape[1] if top_k <= 0 else min(int(top_k), probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, k)
        vocab = np.asarray(inference_answer_vocab, dtype=object)
        top_probs = np.take_along_axis(probs, order, axis=1).astype(float)
        table["answer"] = vocab[order[:, 0]].tolist()
        table["probability"] = top_probs[:, 0].tolist()
        table["top_answers"] = [list(row) for row in vocab[order]]
        table["top_probabilities"] = [list(row) for row in top_probs]
    tokenizer = None
    for name, out in outputs.items():
        if name == ANSWER_HEAD:
            continue
        if "ids" in out:
            tokenizer = tokenizer or parse_tokenizer(inference_tokenizer)
            table[name] = tokenizer.decode_batch(out["ids"].tolist(), skip_special_tokens=True)
        elif "labels" in out:  # a head with class names: the predicted names, then the values
            names, values = out["labels"], out["values"]
            if out["multilabel"]:
                table[name] = [list(names[row >= 0.5]) for row in values]
            else:
                table[name] = names[values.argmax(1)].tolist()
            table[f"{name}_probabilities"] = values.astype(float).tolist()
        else:
            for key, values in out.items():
                column = name if key == "values" else f"{name}_{key}"
                table[column] = values.astype(float).tolist()  # (B,) or (B, E) -> lists
    return pd.DataFrame(table, index=range(rows))


def score_requests(
    request_batches: Iterable[pd.DataFrame],
    inference_model: ServingModel | dict,
    inference_tokenizer: str,
    inference_answer_vocab: list[str],
    top_k: int,
) -> Iterator[pd.DataFrame]:
    """Batch scoring of a request table of any length (`kedro run --pipeline=inference`):
    the served pipeline's three steps on one batch at a time, each batch's predictions
    saved as it is yielded, so memory stays flat in the number of rows. The network
    is built once. A bad row fails with its row number in the whole table."""
    served = ServingModel.of(inference_model)
    start, started = 0, time.perf_counter()
    for batch in request_batches:
        batch = batch.set_axis(range(start, start + len(batch)))  # row numbers of the whole table
        inputs = preprocess_requests(batch, served, inference_tokenizer)
        yield postprocess_predictions(predict(inputs, served), inference_tokenizer, inference_answer_vocab, top_k)
        start += len(batch)
    if not start:
        raise RequestError(
            "the request table (catalog entry batch_requests) has no rows: nothing to score, and "
            "batch_predictions still holds the previous run's predictions"
        )
    seconds = time.perf_counter() - started
    logger.info("Scored %d requests in %.1f s (%.0f rows/s)", start, seconds, start / max(seconds, 1e-9))
