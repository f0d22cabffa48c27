"""VQA v2 in its published layout (the standard VQA interchange format):

    raw_annotations: v2_OpenEnded_mscoco_<name>_questions.json
                         {"questions": [{question_id, image_id, question}]}
                     v2_mscoco_<name>_annotations.json
                         {"annotations": [{question_id, image_id, answer_type,
                           multiple_choice_answer, answers: [{answer, ...}] x 10}]}
    raw_images:      <name>/COCO_<name>_<image_id:012d>.jpg

One canonical row per question: `answer` is `multiple_choice_answer` (the training
target), `question_type` the annotation's `answer_type` (yes/no, number, other), and
`answers` the ten human answers joined with "|", from which evaluation scores VQA
accuracy: min(#humans who gave the predicted answer / 3, 1). Answers are compared
after a light normalisation (lower case, surrounding space and a final full stop
removed), not the official evaluation script's full one (which also maps number
words and drops articles), so figures are close to, not equal to, the leaderboard's.
A question without an annotation is a problem record (`data.quality`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from ..image_root import ImageRoot
from ..quality import problems_frame
from ..schema import SPLITS
from ..splits import hold_out_val_images
from .base import partition

logger = logging.getLogger(__name__)

SOURCE = "vqa_v2"
ANSWER_SEPARATOR = "|"


@dataclass
class VQAv2Config:
    # canonical split -> VQA split name; `val` is carved from train by val_fraction
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train2014", "test": "val2014"})
    questions: str = "v2_OpenEnded_mscoco_{}_questions"  # partition name; {} = split name
    annotations: str = "v2_mscoco_{}_annotations"
    image: str = "{split}/COCO_{split}_{id:012d}.jpg"  # image path under raw_images

    def __post_init__(self):
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or "train" not in self.splits:
            raise ValueError(
                f"vqa_v2.splits keys {sorted(self.splits)} must include 'train' and be among {SPLITS} (bad: {bad})"
            )


def normalise(answer: str) -> str:
    """The comparison form of an answer (see the module docstring)."""
    return " ".join(str(answer).lower().split()).removesuffix(".").strip()


def vqa_accuracy(predicted: list[str], human_answers: list[str]) -> list[float]:
    """Per question: min(#humans who gave `predicted` / 3, 1); `human_answers` are
    "|"-joined answer lists as in the sample table's `answers` column."""
    scores = []
    for answer, humans in zip(predicted, human_answers, strict=True):
        given = [normalise(a) for a in str(humans).split(ANSWER_SEPARATOR) if a]
        scores.append(min(given.count(normalise(answer)) / 3.0, 1.0))
    return scores


def _entries(doc, key: str, name: str) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ValueError(f"VQA v2 {name}.json: expected a JSON object with a list {key!r}")
    return doc[key]


def _read_split(annotations, cfg: VQAv2Config, name: str, split: str):
    q_name, a_name = cfg.questions.format(name), cfg.annotations.format(name)
    questions = pd.DataFrame(_entries(partition(annotations, q_name, SOURCE, f"{split} questions"), "questions", q_name))
    answers = pd.DataFrame(_entries(partition(annotations, a_name, SOURCE, f"{split} annotations"), "annotations", a_name))
    merged = questions.merge(
        answers[["question_id", "answer_type", "multiple_choice_answer", "answers"]], on="question_id", how="left"
    )
    missing = merged["multiple_choice_answer"].isna().to_numpy()
    problems = pd.DataFrame(
        {
            "source": SOURCE,
            "split": split,
            "reason": "unannotated_question",
            "record": [f"question {q} in {q_name}.json" for q in merged.loc[missing, "question_id"]],
            "image_path": "",
            "detail": f"no annotation in {a_name}.json",
        }
    )
    merged = merged.loc[~missing]
    table = pd.DataFrame(
        {
            "sample_id": [f"vqa_v2/{name}/{q}" for q in merged["question_id"]],
            "image_id": [f"vqa_v2/{name}/{i}" for i in merged["image_id"]],
            "image_path": [cfg.image.format(split=name, id=int(i)) for i in merged["image_id"]],
            "text": merged["question"].astype(str).to_numpy(),
            "answer": merged["multiple_choice_answer"].map(normalise).to_numpy(),
            "split": split,
            "question_type": merged["answer_type"].fillna("other").astype(str).to_numpy(),
            "source": SOURCE,
            "answers": [
                ANSWER_SEPARATOR.join(normalise(a["answer"]) for a in human) for human in merged["answers"]
            ],
        }
    )
    logger.info("VQA v2 %s (%s): %d questions about %d images", name, split, len(table), table["image_id"].nunique())
    return table, problems


def read(annotations, images: ImageRoot, cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every configured split as one canonical table, and the unannotated questions."""
    vqa: VQAv2Config = cfg.vqa_v2
    tables, problems = zip(*(_read_split(annotations, vqa, name, split) for split, name in vqa.splits.items()), strict=True)
    table = pd.concat(tables, ignore_index=True)
    if "val" not in vqa.splits:
        hold_out_val_images(table, cfg.val_fraction, cfg.seed)
    return table, problems_frame(pd.concat(problems, ignore_index=True))
