from kedro.pipeline import Node, Pipeline

from .nodes import decode_images, ingest


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest,
                ["params:ingestion", "params:tasks"],
                ["samples", "quarantine", "quarantine_summary"],
                name="ingest_samples",
            ),
            Node(decode_images, ["samples", "params:ingestion", "params:model"], "images", name="decode_images"),
        ]
    )
