"""Training outside `kedro run`, for clusters: the same node, the same config.

Run the train pipeline once (or at least `--pipeline ingestion` and
`--pipeline tokenization`) so the catalog holds the encoded data, then:

    # 2 processes on this machine
    torchrun --standalone --nproc-per-node 2 -m multimodal_doubleloop.commands.torchrun
    # 2 machines x 8 GPUs (SLURM, Kubernetes: one launcher per node)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $MASTER_HOST:29500 -m multimodal_doubleloop.commands.torchrun --env base

Every rank loads the inputs from the catalog and joins the process group from
torchrun's environment; rank 0 alone saves `trained_model` and `training_history`.
No Kedro hooks run here, so nothing is logged to MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from ..pipelines.training.nodes import train_model
from ..settings import CONFIG_LOADER_ARGS
from ..training import distributed

logger = logging.getLogger(__name__)
INPUTS = ("samples", "images", "encoded_texts", "answer_vocab", "tokenizer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train under torchrun with the project's catalog and parameters")
    parser.add_argument("--env", default=None, help="Kedro config environment (default: local)")
    parser.add_argument("--project", default=".", help="project root")
    args = parser.parse_args(argv)
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    ctx = distributed.init_from_env()
    project = Path(args.project).resolve()
    os.chdir(project)  # catalog paths are relative to the project root
    # The catalog and parameters without a KedroSession: no hooks run, so the ranks
    # never touch the MLflow store (two ranks creating it at once race on sqlite).
    conf = OmegaConfigLoader(conf_source=str(project / "conf"), env=args.env, **CONFIG_LOADER_ARGS)
    catalog = DataCatalog.from_config(conf["catalog"])
    params = conf["parameters"]
    inputs = [catalog.load(name) for name in INPUTS]
    training = {**params["training"], "world_size": ctx.world_size}
    trained, _curves, history = train_model(
        *inputs, params["model"], training, params.get("tasks", {}), catalog.load("initial_weights")
    )
    if ctx.is_main:
        catalog.save("trained_model", trained)
        catalog.save("training_history", history)
        logger.info("rank 0 saved trained_model and training_history")
    distributed.destroy()


if __name__ == "__main__":
    main()
