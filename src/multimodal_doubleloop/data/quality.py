"""Malformed input: found by the sources and by `screen_images`, then either a clear
error or a quarantine report, per `ingestion.on_bad_input`. Nothing is dropped silently.

A source returns `(table, problems)`: the rows it could build and one problem row per
record it could not (columns `PROBLEM_COLUMNS`). `screen_images` moves the rows of
images that are missing or unreadable into problems too. `apply_policy` then raises
`BadInputError` (policy "error") or returns the problems as the quarantine report.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from PIL import Image, UnidentifiedImageError

from .image_root import ImageRoot

logger = logging.getLogger(__name__)

POLICIES = ("error", "quarantine")
VERIFY_MODES = ("none", "header", "full")  # what `screen_images` reads of each image
PROBLEM_COLUMNS = ("source", "split", "reason", "record", "image_path", "detail")
REASONS = {
    "missing_image_file": "the image file does not exist",
    "unreadable_image": "the image file cannot be decoded",
    "caption_not_string": "the caption is not a string",
    "empty_caption": "the caption is empty or only whitespace",
    "unknown_image_id": "the annotation points to an image id absent from `images`",
    "duplicate_annotation_id": "an earlier annotation has the same id (the first is kept)",
    "duplicate_image_id": "an earlier image entry has the same id (the first is kept)",
    "bad_annotation_record": "the annotation lacks an integer id",
    "bad_image_record": "the image entry lacks an integer id or a string file_name",
    "unannotated_question": "the question has no annotation (no answers to learn or score)",
}


class BadInputError(ValueError):
    """Malformed input under `on_bad_input: error`; the message has counts and examples."""


def problems_frame(rows: list[dict] | pd.DataFrame | None = None) -> pd.DataFrame:
    """Problems with exactly `PROBLEM_COLUMNS`, as strings (an empty frame for None)."""
    frame = pd.DataFrame(rows if rows is not None else [], columns=list(PROBLEM_COLUMNS))
    unknown = sorted(set(frame["reason"]) - set(REASONS))
    if unknown:
        raise ValueError(f"unknown problem reason(s) {unknown}; add them to quality.REASONS")
    return frame.fillna("").astype(str)


def _check(root: ImageRoot, path: str, mode: str) -> tuple[str, str] | None:
    """(reason, detail) when the image at `path` (under `root`) is unusable, else None."""
    try:
        with root.open(path) as f, Image.open(f) as im:  # reads the header only: format and size
            if mode == "full":
                im.load()  # decodes every pixel: finds truncated files too
    except FileNotFoundError:
        return "missing_image_file", f"no such file: {root.where(path)} (paths are relative to raw_images)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL raises OSError for truncated data, SyntaxError for some corrupt headers;
        # opening a folder raises IsADirectoryError (an OSError)
        if not root.isfile(path):
            return "missing_image_file", "not a regular file"
        return "unreadable_image", f"{type(exc).__name__}: {exc}"
    return None


def screen_images(
    table: pd.DataFrame, root: ImageRoot, mode: str, source: str, workers: int = 8
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Open every distinct image of the table under `root` (threads: the work is I/O).

    mode "header" reads each file's header (finds missing, empty and non-image files),
    "full" decodes every pixel (also finds truncated files), "none" reads nothing.
    Returns the rows of usable images and one problem per row of an unusable one."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"ingestion.verify_images={mode!r}: use one of {VERIFY_MODES}")
    if mode == "none" or table.empty:
        return table, problems_frame()
    paths = table["image_path"].drop_duplicates().tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _check(root, p, mode), paths, chunksize=64))
    bad = {p: r for p, r in zip(paths, results, strict=True) if r is not None}
    if not bad:
        return table, problems_frame()
    is_bad = table["image_path"].isin(set(bad)).to_numpy()
    rows = table.loc[is_bad, ["split", "sample_id", "image_path"]]
    found = rows["image_path"].map(bad)
    problems = problems_frame(
        pd.DataFrame(
            {
                "source": source,
                "split": rows["split"].to_numpy(),
                "reason": [r for r, _ in found],
                "record": ("sample " + rows["sample_id"].astype(str)).to_numpy(),
                "image_path": rows["image_path"].to_numpy(),
                "detail": [d for _, d in found],
            }
        )
    )
    return table.loc[~is_bad], problems


def describe(problems: pd.DataFrame, examples: int = 2) -> str:
    """One clause per reason: count, meaning and a few example records."""
    parts = []
    for reason, group in problems.groupby("reason", sort=True):
        shown = "; ".join(
            r.record + (f" {r.image_path}" if r.image_path else "") + (f" ({r.detail})" if r.detail else "")
            for r in group.head(examples).itertuples()
        )
        parts.append(f"{reason}: {len(group)} ({REASONS[reason]}; e.g. {shown})")
    return ", ".join(parts)


def apply_policy(problems: pd.DataFrame, policy: str, source: str) -> pd.DataFrame:
    """Raise on any problem under "error"; under "quarantine" log and return the report."""
    if policy not in POLICIES:
        raise ValueError(f"ingestion.on_bad_input={policy!r}: use one of {POLICIES}")
    if problems.empty:
        return problems_frame()
    if policy == "error":
        raise BadInputError(
            f"{source}: {len(problems)} malformed record(s) with ingestion.on_bad_input=error: "
            f"{describe(problems)}. Fix the data, or set ingestion.on_bad_input=quarantine to "
            "move them to the quarantine report (data/08_reporting/quarantine.csv)"
        )
    logger.warning(
        "%s: quarantined %d malformed record(s) (see the quarantine report): %s",
        source,
        len(problems),
        describe(problems),
    )
    return problems.reset_index(drop=True)


def summarise(report: pd.DataFrame, policy: str) -> dict:
    """Counts of the quarantine report, by reason and by split, as JSON-ready data."""
    return {
        "policy": policy,
        "total": len(report),
        "by_reason": {k: int(v) for k, v in report["reason"].value_counts().sort_index().items()},
        "by_split": {k: int(v) for k, v in report["split"].value_counts().sort_index().items()},
    }
