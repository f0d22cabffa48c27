"""The ingestion parameters (`conf/base/parameters_ingestion.yml`) as one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import build
from .images import AugmentConfig
from .quality import POLICIES, VERIFY_MODES
from .sources import SOURCES as _READERS
from .sources.coco_captions import CocoCaptionsConfig
from .sources.image_folder import ImageFolderConfig
from .sources.table import TableConfig
from .sources.vqa_v2 import VQAv2Config

SOURCES = tuple(_READERS)


@dataclass
class IngestionConfig:
    source: str = "easy_vqa"  # easy_vqa | coco_captions | image_folder | table | vqa_v2
    val_fraction: float = 0.05  # share of training *images* held out, with all their texts
    seed: int = 0  # of the validation split and the max_images_per_split draw
    # images are resized to image_size x image_size; 0 = the model preset's
    # vision.image_size (one source of truth: `--params model.preset=seed` decodes at 224)
    image_size: int = 0
    in_memory_images: bool = True  # decode all once (small data); false = lazily in workers
    max_images_per_split: int | None = None  # N images of each split, drawn with `seed` (quick runs)
    on_bad_input: str = "error"  # error | quarantine: what malformed records do (data.quality)
    # What ingestion reads of each image to find missing/unreadable files: none | header
    # (cheap: format and size) | full (decodes every pixel, also finds truncated files).
    verify_images: str = "header"
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training only
    coco_captions: CocoCaptionsConfig = field(default_factory=CocoCaptionsConfig)
    image_folder: ImageFolderConfig = field(default_factory=ImageFolderConfig)
    table: TableConfig = field(default_factory=TableConfig)
    vqa_v2: VQAv2Config = field(default_factory=VQAv2Config)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"ingestion.source={self.source!r}: use one of {SOURCES}")
        if self.on_bad_input not in POLICIES:
            raise ValueError(f"ingestion.on_bad_input={self.on_bad_input!r}: use one of {POLICIES}")
        if self.verify_images not in VERIFY_MODES:
            raise ValueError(f"ingestion.verify_images={self.verify_images!r}: use one of {VERIFY_MODES}")
        bad = {
            "val_fraction": not 0 <= self.val_fraction < 1,
            "image_size": self.image_size < 0,
            "max_images_per_split": self.max_images_per_split is not None and self.max_images_per_split < 1,
        }
        if any(bad.values()):
            raise ValueError(
                "out-of-range value(s) " + ", ".join(f"{k}={getattr(self, k)!r}" for k, b in bad.items() if b)
            )

    @classmethod
    def from_dict(cls, params: dict) -> IngestionConfig:
        """Unknown keys and wrong types fail with their key path (`ingestion.<key>`)."""
        return build(cls, params, "ingestion")
