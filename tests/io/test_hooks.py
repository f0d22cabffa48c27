"""Project hooks that check a run before its costly nodes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from multimodal_doubleloop.io.hooks import ParameterCheckHooks


def _pipeline(*names: str) -> SimpleNamespace:
    return SimpleNamespace(nodes=[SimpleNamespace(name=n) for n in names])


def test_a_run_that_evaluates_stops_after_ingestion_without_test_rows(samples):
    """Not after training, in evaluation; the error names the source and what to set.
    A run that does not evaluate (e.g. `--pipeline training` for a later init_from) may
    have no test split."""
    no_test = samples[samples["split"] != "test"]
    hooks = ParameterCheckHooks()
    hooks.before_pipeline_run({}, _pipeline("ingestion.ingest_samples", "training.train_model"), None)
    hooks.after_dataset_saved("samples", no_test, None)
    hooks.before_pipeline_run({}, _pipeline("ingestion.ingest_samples", "evaluation.evaluate_model"), None)
    hooks.after_dataset_saved("samples", samples, None)  # with test rows: fine
    with pytest.raises(ValueError, match=r"no 'test' rows for this run's evaluation.*source easy_vqa.*ingestion.<source>.splits"):
        hooks.after_dataset_saved("samples", no_test, None)
