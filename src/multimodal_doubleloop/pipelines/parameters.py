"""Every stage's parameters built into their dataclasses at once, before any node runs.

Each node still builds its own config at its boundary; this check only brings the
failures forward: a misspelt key or an out-of-range value in any `parameters_*.yml`
(or `--params`) fails when the Kedro context is created, naming the key, instead of
after ingestion and tokenization have run (`io.hooks.ParameterCheckHooks`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..data.config import IngestionConfig
from ..data.tokenizer import TokenizationConfig
from ..models import resolve_model_config
from ..tasks import TasksConfig
from ..training.config import TrainConfig
from .controller_study.nodes import StudyConfig
from .ingestion.nodes import image_size

MODEL_KEYS = {"preset", "presets", "init_from", "pretrained"}


def _model(params: dict) -> None:
    unknown = sorted(set(params["model"]) - MODEL_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in model; allowed: {sorted(MODEL_KEYS)}")
    unknown = sorted(set(params["model"].get("pretrained") or {}) - {"vision", "text"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in model.pretrained; allowed: ['text', 'vision']")
    vocab = (params.get("tokenization") or {}).get("vocab_size", 1000)
    length = (params.get("tokenization") or {}).get("max_length", 16)
    resolve_model_config(params["model"], vocab, length, num_answers=13)


def _image_size(params: dict) -> None:
    image_size(IngestionConfig.from_dict(params["ingestion"]), params["model"])


CHECKS: dict[str, Callable[[dict], object]] = {
    "ingestion": lambda p: IngestionConfig.from_dict(p["ingestion"]),
    "tokenization": lambda p: TokenizationConfig.from_dict(p["tokenization"]),
    "tasks": lambda p: TasksConfig.from_dict(p["tasks"]),
    "model": _model,
    "training": lambda p: TrainConfig.from_dict(p["training"]),
    "controller_study": lambda p: StudyConfig.from_dict(p["controller_study"]),
}


def check_starting_point(model_params: dict, entry: dict | None) -> None:
    """`model.init_from` / `model.pretrained.*` must be what the catalog's
    `initial_weights` entry reads (it reads them from `--params`): set in a parameters
    file alone, they would be silently ignored."""
    entry = (entry or {}).get("dataset", entry or {})
    wanted = {"init_from": model_params.get("init_from") or "",
              **{k: v or "" for k, v in (model_params.get("pretrained") or {}).items()}}
    for key, value in wanted.items():
        read = entry.get(key) or ""
        if str(value) != str(read):
            name = "model.init_from" if key == "init_from" else f"model.pretrained.{key}"
            raise ValueError(
                f"{name}={value!r} in the parameters, but the catalog's initial_weights reads {read!r}: "
                f"set it on the command line (--params {name}=...), which both read"
                + (", or set both" if read else "")
            )


def check_parameters(params: dict) -> None:
    """Build every section present in `params`; raise one ValueError listing them all."""
    errors = []
    for section, check in CHECKS.items():
        if section in params:
            try:
                check(params)
            except (ValueError, TypeError, KeyError) as exc:
                errors.append(f"{section}: {exc}")
    if {"ingestion", "model"} <= set(params) and not any(e.startswith(("ingestion", "model")) for e in errors):
        try:
            _image_size(params)
        except ValueError as exc:
            errors.append(f"ingestion/model: {exc}")
    if errors:
        raise ValueError("the parameters do not build; fix them before running:\n- " + "\n- ".join(errors))
