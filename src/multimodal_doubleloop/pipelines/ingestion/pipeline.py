from kedro.pipeline import Node, Pipeline

from .nodes import decode_images, ingest_samples


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(ingest_samples, "params:ingestion", "samples", name="ingest_samples"),
            Node(decode_images, ["samples", "params:ingestion"], "images", name="decode_images"),
        ]
    )
