from kedro.pipeline import Node, Pipeline

from ..training.pipeline import TRAINING_INPUTS
from .nodes import question_only_baseline, run_controller_study, summarise_controller_study


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                question_only_baseline,
                ["samples", "params:controller_study"],
                "controller_study_baseline",
                name="question_only_baseline",
            ),
            Node(
                run_controller_study,
                [*TRAINING_INPUTS, "params:tasks", "params:controller_study", "controller_study_done"],
                ["controller_study_cells", "controller_study_part"],
                name="run_controller_study",
            ),
            Node(
                summarise_controller_study,
                ["controller_study_cells", "controller_study_part", "controller_study_baseline"],
                ["controller_study_table", "controller_study_plot", "controller_study_runs", "controller_study_verdict"],
                name="summarise_controller_study",
            ),
        ]
    )
