from kedro.pipeline import Node, Pipeline

from ..training.pipeline import TRAINING_INPUTS
from .nodes import run_controller_study, summarise_controller_study


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                run_controller_study,
                [*TRAINING_INPUTS, "params:controller_study"],
                "controller_study_cells",
                name="run_controller_study",
            ),
            Node(
                summarise_controller_study,
                "controller_study_cells",
                ["controller_study_table", "controller_study_plot", "controller_study_runs", "controller_study_verdict"],
                name="summarise_controller_study",
            ),
        ]
    )
