"""A trained model, built once: what evaluation and serving run.

`load_trained_model` turns the catalog's `{"config", "state_dict", "labels"}` into the
network in eval mode. `ServingModel` holds that network with its config and class
names for serving: it is built when the MLflow model loads, and requests share it
(`copy.deepcopy`, which kedro-mlflow applies to its catalog on every request, returns
the same object), so a request only preprocesses, runs the forward pass and
postprocesses.
"""

from __future__ import annotations

import torch

from .multimodal import ModelConfig, MultimodalModel, build_model


def load_trained_model(trained_model: dict) -> MultimodalModel:
    """The network of a trained-model dict, weights loaded, in eval mode."""
    model = build_model(ModelConfig.from_dict(trained_model["config"]))
    model.load_state_dict(trained_model["state_dict"])
    return model.eval()


class ServingModel:
    """The built network (eval mode, on `device`), its config, head class names and
    request limits."""

    def __init__(self, trained_model: dict, device: str | torch.device = "cpu"):
        self.config: dict = trained_model["config"]
        self.model_config = ModelConfig.from_dict(self.config)  # parsed once, not per request
        self.labels: dict[str, list[str]] = dict(trained_model.get("labels") or {})
        # what one request may cost (`inference.limits` when packaged; {} = the defaults)
        self.request_limits: dict = dict(trained_model.get("request_limits") or {})
        self.network = load_trained_model(trained_model).to(device)
        self.device = torch.device(device)

    @classmethod
    def of(cls, model: ServingModel | dict) -> ServingModel:
        """`model` itself, or one built from a trained-model dict."""
        return model if isinstance(model, ServingModel) else cls(model)

    def __deepcopy__(self, memo: dict) -> ServingModel:
        return self  # read-only at inference: every request shares the one network
