"""The easy-VQA data set shipped inside the `easy-vqa` package (the embedded default)."""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def read_easy_vqa(val_fraction: float, seed: int) -> pd.DataFrame:
    """Official train/test questions; `val_fraction` of train *images* become `val`.

    Splitting by image keeps every question about a validation image out of training.
    """
    import easy_vqa  # the package is the data source; imported here to keep it optional

    frames = []
    for split, questions, paths in (
        ("train", easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
        ("test", easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()),
    ):
        texts, answers, image_ids = questions
        missing = sorted(set(image_ids) - set(paths))
        if missing:
            raise FileNotFoundError(
                f"easy-VQA {split} questions refer to {len(missing)} image(s) not shipped "
                f"in the package, e.g. id {missing[0]}; reinstall easy-vqa"
            )
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": [f"easy_vqa/{split}/{i}" for i in range(len(texts))],
                    "image_id": [f"easy_vqa/{split}/{i}" for i in image_ids],
                    "image_path": [paths[i] for i in image_ids],
                    "text": texts,
                    "answer": answers,
                    "split": split,
                    "question_type": [question_type(a) for a in answers],
                    "source": "easy_vqa",
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    if val_fraction > 0:
        train_images = np.sort(table.loc[table["split"] == "train", "image_id"].unique())
        rng = np.random.default_rng(seed)
        n_val = max(1, int(round(val_fraction * len(train_images))))
        val_images = set(rng.choice(train_images, size=n_val, replace=False))
        table.loc[table["image_id"].isin(val_images), "split"] = "val"
    return table
