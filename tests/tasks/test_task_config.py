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




def test_an_empty_params_value_means_no_zero_shot_column():
    """`--params tasks.definitions.retrieval.zero_shot=` arrives as None: no zero-shot metric."""
    cfg = TasksConfig.from_dict(
        {"active": ["retrieval"], "definitions": {"retrieval": {"type": "contrastive", "zero_shot": None}}}
    )
    assert cfg.definitions["retrieval"].zero_shot == "" and cfg.required_columns() == set()


def test_unknown_task_type_lists_the_registry():
    with pytest.raises(ValueError, match=r"task type 'ranking': use one of \('classification', 'multilabel'"):
        TaskConfig("ranking")
