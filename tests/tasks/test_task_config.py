"""Task definitions: names, fields, types and the registry, checked at the boundary."""

from __future__ import annotations

import pytest

from multimodal_doubleloop.tasks import (
    TaskConfig,
    TasksConfig,
)

# --- configuration ----------------------------------------------------------------


def test_tasks_config_checks_names_fields_and_types():
    cfg = TasksConfig.from_dict({"active": "b+a", "definitions": {"a": {"type": "caption"}, "b": {}}})
    assert cfg.active == ["b", "a"] and cfg.definitions["b"].target == "answer"
    with pytest.raises(ValueError, match=r"unknown: \['c'\]"):
        TasksConfig.from_dict({"active": ["c"], "definitions": {"a": {}}})
    with pytest.raises(ValueError, match=r"does not read \['beam_size'\]"):
        TasksConfig.from_dict({"active": ["a"], "definitions": {"a": {"type": "regression", "target": "x", "beam_size": 3}}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['taget'\] in tasks.definitions.a"):
        TasksConfig.from_dict({"active": ["a"], "definitions": {"a": {"type": "regression", "taget": "x"}}})
    with pytest.raises(ValueError, match="needs `target`"):
        TaskConfig("multilabel")


