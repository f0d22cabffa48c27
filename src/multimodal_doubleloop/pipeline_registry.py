"""Project pipelines.

Every composed pipeline imports the stage pipelines it needs explicitly: under
`kedro run --pipeline X`, `find_pipelines()` imports only folder X (kedro >= 1.5),
so a composed name that is not a folder must not rely on it.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from .pipelines import controller_study, evaluation, ingestion, tokenization, training


def register_pipelines() -> dict[str, Pipeline]:
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "tokenization": tokenization.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    train = sum(stages.values(), start=Pipeline([]))
    # The study re-runs ingestion and tokenization (seconds) so it never scores a stale slice.
    study = stages["ingestion"] + stages["tokenization"] + controller_study.create_pipeline()
    return {**stages, "controller_study": study, "train": train, "__default__": train}
