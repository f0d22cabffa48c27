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


def stage(pipeline: Pipeline, name: str) -> Pipeline:
    """A stage as a namespace: its nodes are `<name>.<node>` and collapse into one box in
    `kedro viz`; dataset and parameter names stay as the catalog has them."""
    return Pipeline(pipeline, namespace=name, prefix_datasets_with_namespace=False)


def register_pipelines() -> dict[str, Pipeline]:
    stages = {
        "ingestion": stage(ingestion.create_pipeline(), "ingestion"),
        "tokenization": stage(tokenization.create_pipeline(), "tokenization"),
        "training": stage(training.create_pipeline(), "training"),
        "evaluation": stage(evaluation.create_pipeline(), "evaluation"),
    }
    packaging = stage(inference.create_packaging_pipeline(), "packaging")
    train = pipeline_ml_factory(
        training=sum(stages.values(), start=Pipeline([])) + packaging,
        inference=inference.create_pipeline(),
        input_name="inference_requests",
        log_model_kwargs=inference.log_model_kwargs(),
    )
    # `fit`: the stages without the serving package, for task sets without an `answer`
    # head (e.g. COCO captions: `kedro run --env coco_captions --pipeline fit`).
    fit = sum(stages.values(), start=Pipeline([]))
    # The study re-runs ingestion and tokenization (seconds) so it never scores a stale slice.
    study = stages["ingestion"] + stages["tokenization"] + stage(controller_study.create_pipeline(), "controller_study")
    return {
        **stages,
        # `serving`: what the MLflow model runs per request (on the catalog: the
        # example requests -> predictions); `inference`: a request table of any
        # length, scored in batches
        "serving": inference.create_pipeline(),
        "inference": inference.create_batch_pipeline(),
        "controller_study": study,
        "fit": fit,
        "train": train,
        "__default__": train,
    }
