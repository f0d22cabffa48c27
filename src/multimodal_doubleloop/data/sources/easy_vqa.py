"""The easy-VQA data set shipped inside the `easy-vqa` package (the embedded default).

Besides its questions, targets for the other tasks are derived on request
(`derive`), honestly, from easy-VQA's own labels and images:

- `color`, `shape` per image, from the questions and their answers (`image_attributes`):
  a colour question's answer is the colour and a shape question's the shape; a
  question about one attribute that names the other ("what is the blue shape?",
  "what color is the circle?") gives that one too; a yes/no question "is there a C
  shape?" answered yes, or its negated form ("is there not a C shape?", "is no C shape
  present?") answered no, gives C; and when the yes/no answers rule out all colours
  (shapes) but one, it is that one. Contradicting labels raise. About 7% of the
  images get no colour and 4% no shape this way: they stay "" (unknown) and tasks
  that need them skip those images.
- `color_shape` ("blue rectangle") where both are known, and one caption row per
  such image: text "a blue rectangle", `question_type` "caption" (captioning,
  contrastive retrieval over the 24 colour-shape captions, zero-shot prompts).
- `coverage`, the fraction of the image's pixels covered by the shape, computed
  from the image (`shape_coverage`): easy-VQA draws one flat-coloured shape on a
  flat background, so the background is the commonest border colour, the shape
  colour the commonest other colour, and each pixel belongs to whichever of the two
  it is nearer (anti-aliased edges split fairly).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..image_root import ImageRoot
from ..quality import problems_frame
from ..splits import hold_out_val_images
from .base import partition

SOURCE = "easy_vqa"

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def question_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    raise ValueError(f"easy-VQA answer {answer!r} is not yes/no, a colour or a shape")


def package_data() -> str:
    """The `easy-vqa` package's data folder: `<split>/questions.json`, `<split>/images/`
    (the catalog's `${easy_vqa_data:}`)."""
    import easy_vqa  # the package is the data source; imported here to keep it optional

    return str(Path(easy_vqa.__file__).resolve().parent / "data")


def read(annotations, images: ImageRoot, cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Official train/test questions (`<split>/questions.json`: [question, answer,
    image id] triples); `cfg.val_fraction` of train *images* become `val`.

    Splitting by image keeps every question about a validation image out of training.
    """
    frames = []
    for split in ("train", "test"):
        questions = partition(annotations, split, SOURCE, f"{split}/questions.json")
        if not isinstance(questions, list) or not all(isinstance(q, list) and len(q) == 3 for q in questions):
            raise ValueError(f"easy-VQA {split}/questions.json: expected a list of [question, answer, image id]")
        texts, answers, image_ids = (list(c) for c in zip(*questions, strict=True))
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": [f"easy_vqa/{split}/{i}" for i in range(len(texts))],
                    "image_id": [f"easy_vqa/{split}/{i}" for i in image_ids],
                    "image_path": [f"{split}/images/{i}.png" for i in image_ids],
                    "text": texts,
                    "answer": answers,
                    "split": split,
                    "question_type": [question_type(a) for a in answers],
                    "source": SOURCE,
                }
            )
        )
    return hold_out_val_images(pd.concat(frames, ignore_index=True), cfg.val_fraction, cfg.seed), problems_frame()


DERIVED_COLUMNS = ("color", "shape", "color_shape", "coverage")
_WORD = r"(?:^|\s)({})(?=[\s?])"
_NEGATED = r"\b(?:not|no)\b"


def _settle(values: pd.DataFrame, image_ids: pd.Series, name: str) -> pd.Series:
    """One value per image from the values each row implies; raise on a contradiction."""
    found = values.assign(image_id=image_ids.to_numpy()).dropna().drop_duplicates()
    conflict = found["image_id"][found["image_id"].duplicated()]
    if len(conflict):
        raise ValueError(
            f"easy-VQA labels give image {conflict.iloc[0]} more than one {name}: "
            f"{sorted(found.loc[found.image_id == conflict.iloc[0], 'value'])}"
        )
    return found.set_index("image_id")["value"]


def image_attributes(table: pd.DataFrame) -> pd.DataFrame:
    """Colour and shape of every image of the table, from its questions ("" = unknown)."""
    text, answer, qtype = table["text"].astype(str), table["answer"].astype(str), table["question_type"]
    color_word = text.str.extract(_WORD.format("|".join(COLORS)), expand=False)
    shape_word = text.str.extract(_WORD.format("|".join(SHAPES)), expand=False)
    yes_no = (qtype == "yes/no").to_numpy()
    asserted = (answer == "yes").to_numpy() ^ text.str.contains(_NEGATED).to_numpy()
    present, absent = yes_no & asserted, yes_no & ~asserted
    out = {}
    for name, own, word, word_other_q, values in (
        ("color", "color", color_word, "shape", COLORS),
        ("shape", "shape", shape_word, "color", SHAPES),
    ):
        implied = pd.Series(np.where(qtype == own, answer, None), index=table.index, dtype=object)
        by_word = ((qtype == word_other_q).to_numpy() | present) & word.notna().to_numpy()
        implied[by_word] = word[by_word]
        known = _settle(pd.DataFrame({"value": implied}), table["image_id"], name)
        # elimination: every value but one ruled out by yes/no answers
        ruled_out = pd.DataFrame({"image_id": table["image_id"][absent], "value": word[absent]}).dropna()
        counts = ruled_out.drop_duplicates().groupby("image_id")["value"].agg(set)
        everything = set(values)
        only = counts[counts.map(len) == len(values) - 1].map(lambda s, e=everything: (e - s).pop())
        only = only[~only.index.isin(known.index)]
        out[name] = pd.concat([known, only])
    images = pd.Index(table["image_id"].unique(), name="image_id")
    return pd.DataFrame({k: v.reindex(images).fillna("") for k, v in out.items()})


def shape_coverage(images: ImageRoot, path: str) -> float:
    """Fraction of the image's pixels covered by its shape (see the module docstring)."""
    with images.open(path) as f, Image.open(f) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int32)  # (H, W, 3)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]  # (H, W)
    border = np.concatenate([packed[0], packed[-1], packed[:, 0], packed[:, -1]])
    colors, counts = np.unique(border, return_counts=True)
    background = colors[counts.argmax()]
    others = packed[packed != background]
    if not len(others):
        return 0.0
    colors, counts = np.unique(others, return_counts=True)
    shape = colors[counts.argmax()]
    flat = pixels.reshape(-1, 3)
    unpack = np.array([16, 8, 0])
    to_shape = ((flat - ((shape >> unpack) & 255)) ** 2).sum(1)
    to_background = ((flat - ((background >> unpack) & 255)) ** 2).sum(1)
    return float((to_shape < to_background).mean())


def derive(table: pd.DataFrame, images: ImageRoot, columns: set[str], caption_rows: bool) -> pd.DataFrame:
    """The table with the requested derived columns and, if asked, one caption row per
    image whose colour and shape are known (see the module docstring)."""
    unknown = sorted(set(columns) - set(DERIVED_COLUMNS))
    if unknown:
        raise ValueError(f"easy-VQA cannot derive column(s) {unknown}; it derives {DERIVED_COLUMNS}")
    if not columns and not caption_rows:
        return table
    per_image = table.drop_duplicates("image_id").set_index("image_id")
    attrs = image_attributes(table)
    known = (attrs["color"] != "") & (attrs["shape"] != "")
    attrs["color_shape"] = np.where(known, attrs["color"] + " " + attrs["shape"], "")
    if "coverage" in columns:
        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL and numpy release the GIL
            paths = per_image.loc[attrs.index, "image_path"].tolist()
            attrs["coverage"] = list(pool.map(lambda p: shape_coverage(images, p), paths, chunksize=64))
    if caption_rows:
        captioned = per_image.loc[known[known].index]
        captions = pd.DataFrame(
            {
                "sample_id": captioned.index + "/caption",
                "image_id": captioned.index,
                "image_path": captioned["image_path"].to_numpy(),
                "text": "a " + attrs.loc[captioned.index, "color_shape"].to_numpy(),
                "answer": "",
                "split": captioned["split"].to_numpy(),
                "question_type": "caption",
                "source": "easy_vqa",
            }
        )
        table = pd.concat([table, captions], ignore_index=True)
    wanted = [c for c in DERIVED_COLUMNS if c in columns]
    return table.join(attrs[wanted], on="image_id")
