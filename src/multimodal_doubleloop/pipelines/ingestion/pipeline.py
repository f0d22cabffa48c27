from kedro.pipeline import Node, Pipeline

from .nodes import decode_images, ingest


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest,
                ["raw_annotations", "raw_images", "params:ingestion", "params:tasks"],
                ["samples", "quarantine", "quarantine_summary"],
                name="ingest_samples",
            ),
            Node(
                decode_images,
                ["samples", "raw_images", "params:ingestion", "params:model"],
                "images",
                name="decode_images",
            ),
        ]
    )
