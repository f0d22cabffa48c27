"""Controller state checkpoints itself from its dataclass fields: no field lists to keep."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from multimodal_doubleloop.training.controller import (
    ControllerConfig,
    DoubleLoopController,
    HypergradientDescent,
)
from multimodal_doubleloop.training.controller.state import CHECKED, CONFIG, Stateful
from multimodal_doubleloop.training.controller.window import WindowStats


@dataclasses.dataclass(eq=False)
class _Toy(Stateful):
    name: str = dataclasses.field(default="x", metadata=CONFIG)
    groups: list[str] = dataclasses.field(default_factory=lambda: ["a"], metadata=CHECKED)
    count: int = 0
    scale: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(2))
    history: list[dict] = dataclasses.field(default_factory=list)
    pair: tuple = (torch.zeros(1), torch.ones(1))


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as checkpoints load: no unpickling of code


def test_every_field_but_config_is_saved_and_restored():
    toy = _Toy(count=3, scale=torch.tensor([1.0, 2.0]), history=[{"v": torch.tensor(4.0)}])
    state = toy.state_dict()
    assert set(state) == {f.name for f in dataclasses.fields(_Toy)} - {"name"}
    toy.scale.add_(1)  # saved values are copies
    other = _Toy()
    other.load_state_dict(_roundtrip(state))
    assert other.count == 3 and torch.equal(other.scale, torch.tensor([1.0, 2.0]))
    assert torch.equal(other.history[0]["v"], torch.tensor(4.0)) and isinstance(other.pair, tuple)


def test_a_state_from_another_version_or_model_is_refused():
    state = _Toy().state_dict()
    with pytest.raises(ValueError, match=r"missing \['count'\]"):
        _Toy().load_state_dict({k: v for k, v in state.items() if k != "count"})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        _Toy().load_state_dict({**state, "extra": 1})
    with pytest.raises(ValueError, match="groups"):
        _Toy(groups=["b"]).load_state_dict(state)


@pytest.mark.parametrize("cls", [HypergradientDescent, DoubleLoopController])
def test_adapter_state_covers_every_dataclass_field(cls):
    cfg = ControllerConfig(method=cls.method, every=4, measure_every=2)
    adapter = cls(cfg, ["vision", "heads"], 0)
    state = adapter.state_dict()
    saved = {f.name for f in dataclasses.fields(cls) if f.metadata.get("state") != "config"}
    assert set(state) == saved | {"method"}
    assert {"window", "a", "b", "anchor", "calibrated", "trace"} <= saved
    window = {f.name for f in dataclasses.fields(WindowStats)} - {"cfg"}
    assert set(state["window"]) == window  # nested state serialises itself too


def test_double_loop_resumes_exactly_from_a_saved_state():
    """Drive one controller through windows, save it mid-run, restore a fresh one and
    check both decide identically from there."""
    cfg = ControllerConfig(method="double_loop", every=4, measure_every=2, max_log_step=0.1)
    groups = ["vision", "heads"]
    torch.manual_seed(0)
    params = {g: torch.nn.Parameter(torch.randn(8)) for g in groups}
    optimizer = torch.optim.AdamW([{"params": [params[g]], "name": g} for g in groups], lr=1e-2)

    def step(adapter, i):
        for p in params.values():
            p.grad = torch.sin(p.detach() * (i + 1))
        adapter.before_step(i, optimizer)
        optimizer.step()
        adapter.observe(i + 1, {"loss": torch.tensor(2.0 / (i + 1)), "accuracy": torch.tensor(0.5),
                                "finite": torch.tensor(True), "progress": i / 40, "lr_factor": 1.0}, optimizer)

    first = DoubleLoopController(cfg, groups, 4)
    for i in range(18):
        step(first, i)
    saved = _roundtrip(first.state_dict())
    weights = {g: p.detach().clone() for g, p in params.items()}
    opt_state = _roundtrip(optimizer.state_dict())
    for i in range(18, 30):
        step(first, i)
    expected = (first.scales(), first.weight_decay_scales(), first.trace[-1])

    with torch.no_grad():
        for g, p in params.items():
            p.copy_(weights[g])
    optimizer.load_state_dict(opt_state)
    second = DoubleLoopController(cfg, groups, 4)
    second.load_state_dict(saved)
    for i in range(18, 30):
        step(second, i)
    assert (second.scales(), second.weight_decay_scales(), second.trace[-1]) == expected
    assert all(math.isfinite(v) for v in expected[0].values()) and expected[0] != {g: 1.0 for g in groups}
