"""What a run's model starts from, as a raw input of the catalog: a previous run, a timm
ViT checkpoint, a Hugging Face BERT directory. Loads a `models.StartingPoint`; every
file is read with fsspec (any URL, `credentials:`), tensors with `weights_only` or
safetensors, so loading runs no code.

    initial_weights:
      type: multimodal_doubleloop.io.InitialWeightsDataset
      init_from: ${runtime_params:model.init_from,""}   # "" = random init
      vision: ""     # e.g. s3://models/vit_base_patch16_224.safetensors
      text: ""       # e.g. /models/bert-base-uncased (config.json, weights, vocab)
      credentials: my_s3

`init_from` is one of: `trained_model` (its newest version in `trained_model_path`),
`trained_model@<version>` (a catalog version, e.g. 2026-12-06T17.02.11.123Z), an
MLflow `models:/<name>@<alias>` / `models:/<name>/<n>` / `runs:/<run_id>/model`, or a
path: a trained-model `.pt` or a training checkpoint `step_*.pt`. A previous run hands
on its tokenizer too (where it has one), so its text tower reads the same tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io import AbstractDataset, DatasetError, Version

from ..data.tokenizer import bert_tokenizer
from ..models.pretrained import read_state_dict
from ..models.starting_point import StartingPoint
from .mlflow_model_artifact import download_model
from .torch_model import TorchModelDataset

logger = logging.getLogger(__name__)


class InitialWeightsDataset(AbstractDataset[None, StartingPoint]):
    def __init__(
        self,
        init_from: str = "",
        vision: str = "",
        text: str = "",
        trained_model_path: str = "data/06_models/model.pt",
        tokenizer_path: str = "data/06_models/tokenizer.json",
        credentials: dict | None = None,
        fs_args: dict | None = None,
        metadata: dict | None = None,
    ):
        self._init_from, self._vision, self._text = (str(v or "") for v in (init_from, vision, text))
        self._trained_model_path, self._tokenizer_path = trained_model_path, tokenizer_path
        self._storage = {**(fs_args or {}), **(credentials or {})}
        self.metadata = metadata

    def load(self) -> StartingPoint:
        start = StartingPoint(requested={"init_from": self._init_from, "vision": self._vision, "text": self._text})
        if self._init_from:
            start.previous, start.tokenizer, where = self._previous(self._init_from)
            start.tokenizer_sha256 = start.previous.pop("tokenizer_sha256", None)
            # the content, not only the name: an alias (@champion) moves, a file is replaced
            start.sources["init_from"] = f"{where} weights:{weights_sha256(start.previous['state_dict'])[:16]}"
        if self._vision:
            data = self._read(self._vision)
            start.vision = read_state_dict(data)
            start.sources["vision"] = f"{self._vision} sha256:{hashlib.sha256(data).hexdigest()[:16]}"
        if self._text:
            self._load_bert(start)
        return start

    def _read(self, url: str) -> bytes:
        with fsspec.open(url, "rb", **self._storage) as f:
            return f.read()

    def _load_bert(self, start: StartingPoint) -> None:
        fs, root = fsspec.core.url_to_fs(self._text, **self._storage)
        names = {PurePosixPath(p).name for p in fs.ls(root, detail=False)}
        weights = next((n for n in ("model.safetensors", "pytorch_model.bin") if n in names), None)
        if "config.json" not in names or weights is None:
            raise DatasetError(
                f"{self._text} is not a Hugging Face BERT directory: it needs config.json and "
                f"model.safetensors or pytorch_model.bin (found {sorted(names)})"
            )
        data = fs.cat_file(f"{root}/{weights}")
        start.text = read_state_dict(data)
        start.text_config = json.loads(fs.cat_file(f"{root}/config.json"))
        vocab = {n: fs.cat_file(f"{root}/{n}").decode() for n in ("tokenizer.json", "vocab.txt", "tokenizer_config.json") if n in names}
        start.tokenizer = bert_tokenizer(vocab, self._text)
        start.sources["text"] = f"{self._text} sha256:{hashlib.sha256(data).hexdigest()[:16]}"

    def _previous(self, source: str) -> tuple[dict, str | None, str]:
        """(trained-model dict, its tokenizer or None, a description) of a previous run."""
        if source == "trained_model" or source.startswith("trained_model@"):
            version = source.partition("@")[2] or None
            model_ds = TorchModelDataset(self._trained_model_path, version=Version(version, None))
            version = version or model_ds.resolve_load_version()
            tokenizer = _text_or_none(f"{self._tokenizer_path}/{version}/{PurePosixPath(self._tokenizer_path).name}", self._storage)
            return model_ds.load(), tokenizer, f"trained_model@{version}"
        if source.startswith(("models:/", "runs:/")):
            local = download_model(source) / "artifacts"
            model = TorchModelDataset(str(local / "model.pt")).load()
            return model, _text_or_none(str(local / "tokenizer.json"), {}), source
        beside = source.rsplit("/", 1)[0] + "/tokenizer.json" if "/" in source else "tokenizer.json"
        return self._model_file(self._read(source), source), _text_or_none(beside, self._storage), source

    def _model_file(self, data: bytes, source: str) -> dict:
        """A trained-model `.pt` ({"config", "state_dict"}) or a training checkpoint
        (`step_*.pt`: {"model": state dict, ...}; its config, the digest of the
        tokenizer it was trained with and its heads' class names in the `.json` beside it)."""
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if isinstance(payload, dict) and {"config", "state_dict"} <= set(payload):
            return payload
        if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
            with fsspec.open(source[: -len(".pt")] + ".json", "r", **self._storage) as f:
                meta = json.load(f)
            logger.info("init_from %s: a training checkpoint (step %s)", source, meta.get("step"))
            return {"config": meta["config"]["model"], "state_dict": payload["model"],
                    "tokenizer_sha256": meta["config"].get("data", {}).get("tokenizer_sha256"),
                    "labels": meta.get("labels") or {}}  # none recorded (older checkpoints): heads start at init
        raise DatasetError(
            f"model.init_from={source!r} is neither a trained-model file ('config', 'state_dict') nor a "
            "training checkpoint ('model'); give trained_model[@version], a models:/ or runs:/ URI, or such a file"
        )

    def save(self, data: Any) -> None:
        raise DatasetError("initial_weights is read-only: it names where a run's model starts from")

    def _describe(self) -> dict[str, Any]:
        return {"init_from": self._init_from, "vision": self._vision, "text": self._text}


def _text_or_none(url: str, storage: dict) -> str | None:
    fs, path = fsspec.core.url_to_fs(url, **storage)
    return fs.cat_file(path).decode() if fs.exists(path) else None


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and bytes: the identity of a starting point."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
