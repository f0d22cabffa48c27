"""Ingestion nodes: read a source into the canonical table; decode its images."""

from __future__ import annotations

import logging

import pandas as pd

from ...data.config import IngestionConfig
from ...data.image_root import EmbeddedImages, ImageRoot, images_of
from ...data.images import build_image_index
from ...data.quality import apply_policy, screen_images, summarise
from ...data.schema import validate_table
from ...data.sources import SOURCES
from ...models import VisionConfig
from ...tasks import TasksConfig, select_rows

logger = logging.getLogger(__name__)


def read_source(
    annotations, images: ImageRoot, cfg: IngestionConfig, tasks: TasksConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The configured source as a table (with what the tasks ask it to derive) and its problems."""
    source = SOURCES.get(cfg.source)
    if source is None:
        raise ValueError(f"ingestion.source={cfg.source!r}: use one of {sorted(SOURCES)}")
    table, problems = source.read(annotations, images, cfg)
    derivable = set(getattr(source, "DERIVED_COLUMNS", ()))
    if hasattr(source, "derive"):
        table = source.derive(table, images, tasks.required_columns() & derivable, tasks.needs_description_rows())
    return table, problems


def sample_images(table: pd.DataFrame, per_split: int, seed: int) -> pd.DataFrame:
    """The rows of `per_split` images of each split, drawn at random (`seed`), with all
    their texts. Not the first N: a source's order is its files' order, and an
    ImageFolder lists class by class, so the first N images would be one class."""
    images = table.drop_duplicates("image_id")[["image_id", "split"]]
    keep = images.sample(frac=1.0, random_state=seed).groupby("split").head(per_split)["image_id"]
    return table[table["image_id"].isin(set(keep))]


def ingest(
    raw_annotations, raw_images: ImageRoot, params: dict, tasks_params: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The canonical sample table of the rows the active tasks use, the quarantine
    report of malformed records (empty unless `on_bad_input: quarantine`) and its counts.

    `raw_annotations` and `raw_images` are the catalog's raw inputs (see
    `data.sources`). Images are screened (`verify_images`) after the task rows and the
    `max_images_per_split` slice are chosen: only images the run would read."""
    cfg, tasks = IngestionConfig.from_dict(params), TasksConfig.from_dict(tasks_params)
    table, problems = read_source(raw_annotations, raw_images, cfg, tasks)
    table = select_rows(table, tasks, cfg.source)
    if cfg.max_images_per_split:
        table = sample_images(table, cfg.max_images_per_split, cfg.seed)
    table, bad_images = screen_images(table, images_of(table, raw_images), cfg.verify_images, cfg.source)
    report = apply_policy(pd.concat([problems, bad_images], ignore_index=True), cfg.on_bad_input, cfg.source)
    table = validate_table(table)
    logger.info(
        "Ingested %d samples over %d images: %s",
        len(table),
        table["image_id"].nunique(),
        table["split"].value_counts().to_dict(),
    )
    return table, report, summarise(report, cfg.on_bad_input)


def ingest_samples(raw_annotations, raw_images: ImageRoot, params: dict, tasks_params: dict | None = None) -> pd.DataFrame:
    """The sample table alone (the quarantine report is still logged); see `ingest`."""
    return ingest(raw_annotations, raw_images, params, tasks_params)[0]


def decode_images(samples: pd.DataFrame, raw_images: ImageRoot, params: dict, model_params: dict | None = None) -> dict:
    """Unique images of the table; pixels decoded in memory when configured, at
    `ingestion.image_size`, or (0) at the chosen model preset's `vision.image_size`.
    Images carried in the table (`image_bytes`) are always decoded in memory: the index
    has no folder to decode them from later."""
    cfg = IngestionConfig.from_dict(params)
    images = images_of(samples, raw_images)
    in_memory = cfg.in_memory_images or isinstance(images, EmbeddedImages)
    if in_memory and not cfg.in_memory_images:
        logger.info("decode_images: the sample table carries its images' bytes; decoding them in memory")
    return build_image_index(samples, images, image_size(cfg, model_params), in_memory, cfg.augment)


def image_size(cfg: IngestionConfig, model_params: dict | None) -> int:
    """The one image size of a run: the model preset's, unless ingestion sets one (which
    must then agree with it)."""
    preset = model_vision_size(model_params) if model_params is not None else None
    if cfg.image_size and preset is not None and cfg.image_size != preset:
        raise ValueError(
            f"ingestion.image_size={cfg.image_size} but model preset {model_params['preset']!r} reads "
            f"{preset}x{preset} images; set ingestion.image_size: 0 (the preset's size) or {preset}"
        )
    size = cfg.image_size or preset
    if not size:
        raise ValueError("ingestion.image_size is 0 (the model's) but no model parameters were given")
    return size


def model_vision_size(model_params: dict) -> int:
    """`vision.image_size` of the chosen preset (the model's default when it sets none)."""
    preset = model_params["presets"].get(model_params["preset"])
    if preset is None:
        raise ValueError(f"model.preset={model_params['preset']!r} is not in model.presets {sorted(model_params['presets'])}")
    return int((preset.get("vision") or {}).get("image_size", VisionConfig().image_size))
