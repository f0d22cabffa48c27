"""Project pipelines.

Every composed pipeline imports the stage pipelines it needs explicitly: under
`kedro run --pipeline X`, `find_pipelines()` imports only folder X (kedro >= 1.5),
so a composed name that is not a folder must not rely on it.

`train` is a kedro-mlflow `PipelineML`: running it (and only it; a pipeline added to
it is demoted to a plain one) logs the `inference` pipeline with the artifacts it read
as one MLflow pyfunc model. Compose with `sum(..., start=Pipeline([]))`, never
`sum(...)` alone: PipelineML's `__radd__` breaks on the implicit `0 + pipeline`.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline import pipeline_ml_factory

from .pipelines import controller_study, evaluation, inference, ingestion, tokenization, training


def register_pipelines() -> dict[str, Pipeline]:
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "tokenization": tokenization.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    train = pipeline_ml_factory(
        training=sum(stages.values(), start=Pipeline([])) + inference.create_packaging_pipeline(),
        inference=inference.create_pipeline(),
        input_name="inference_requests",
        log_model_kwargs=inference.log_model_kwargs(),
    )
    # The study re-runs ingestion and tokenization (seconds) so it never scores a stale slice.
    study = stages["ingestion"] + stages["tokenization"] + controller_study.create_pipeline()
    return {
        **stages,
        "inference": inference.create_pipeline(),
        "controller_study": study,
        "train": train,
        "__default__": train,
    }
