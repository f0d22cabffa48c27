"""State that serialises itself: dataclass fields are the checkpointed state.

A `Stateful` dataclass saves every field in `state_dict` and restores every field in
`load_state_dict`, so adding a field adds it to checkpoints; there is no field list
to keep in step. Fields marked `CONFIG` are set by construction and not saved;
fields marked `CHECKED` are saved and must match on load (e.g. the group names).
Values are saved as tensors and plain containers (loadable with
`torch.load(weights_only=True)`): tensors are cloned to the CPU, objects with a
`state_dict` (modules, optimisers, nested `Stateful`s) save through it.
"""

from __future__ import annotations

import dataclasses

import torch

CONFIG = {"state": "config"}  # construction argument: not saved
CHECKED = {"state": "checked"}  # saved, and must equal the current value on load


def _save(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if hasattr(value, "state_dict"):
        return value.state_dict()
    if isinstance(value, dict):
        return {k: _save(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_save(v) for v in value)
    return value


def _load(current, saved):
    if hasattr(current, "load_state_dict"):
        current.load_state_dict(saved)
        return current
    if isinstance(saved, torch.Tensor):
        device = current.device if isinstance(current, torch.Tensor) else saved.device
        return saved.clone().to(device)
    if isinstance(saved, dict):
        return {k: _load(None, v) for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        return type(saved)(_load(None, v) for v in saved)
    return saved


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


class Stateful:
    """Mixin for dataclasses whose fields are their checkpointed state."""

    def _state_fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self) if f.metadata.get("state") != "config"]

    def state_dict(self) -> dict:
        return {f.name: _save(getattr(self, f.name)) for f in self._state_fields()}

    def load_state_dict(self, state: dict) -> None:
        expected = {f.name for f in self._state_fields()}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__} state does not fit this version (missing {missing}, "
                f"unexpected {unexpected}); start over with training.resume: false"
            )
        for f in self._state_fields():
            current, saved = getattr(self, f.name), state[f.name]
            if f.metadata.get("state") == "checked":
                if _plain(saved) != _plain(current):
                    raise ValueError(
                        f"{type(self).__name__} state has {f.name}={saved!r}, this run has {current!r}"
                    )
                continue
            setattr(self, f.name, _load(current, saved))
        self._after_load()

    def _after_load(self) -> None:
        """Recompute what derives from the state (override where needed)."""
