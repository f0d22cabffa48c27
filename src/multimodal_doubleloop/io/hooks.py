"""Project hooks: check every parameter before anything runs; log versioned catalog
files to the active MLflow run; name the run, log its sample table as an MLflow
input, log the resolved model and training config as its params, and register the
model a `train` run logs (`io.registry`).

kedro-mlflow's hook is registered here (`ProjectMlflowHook`, its plugin entry point
disabled in settings) so that it logs the parameters of every node as given except
`model`, `training` and `tasks`: those are logged resolved, once (`resolved_params`),
so two runs differ in exactly the settings that made them differ, not in presets
neither used.

kedro-mlflow's `MlflowArtifactDataset` cannot wrap a *versioned* dataset under
Kedro 1.x lazy catalogs (the wrapper gets its own save version and the catalog
refuses it), so versioned artifacts say `metadata: {mlflow_artifact_path: ...}`
and this hook logs the exact file that was just saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path

import mlflow
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks import MlflowHook
from kedro_mlflow.framework.hooks.utils import _assert_mlflow_enabled

from ..data.schema import table_fingerprint
from ..data.splits import require_test_rows
from .registry import TEST_SET_TAG

logger = logging.getLogger(__name__)


class MlflowVersionedArtifactHooks:
    def __init__(self):
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        artifact_path = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        if artifact_path is None:
            return
        path = Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
        logger.info("Logged %s to MLflow as %s/%s", path, artifact_path, path.name)


# Node parameters logged resolved (`resolved_params`) rather than as given.
RESOLVED_PARAMS = ("params:model", "params:training", "params:tasks")


# Tags of every run this project opens: what makes two runs the same run (a rerun of
# it resumes its checkpoint), and the process that logs to it.
IDENTITY_TAG, HOST_TAG, PID_TAG = "project.run_identity", "project.host", "project.pid"


def run_identity(pipelines: list[str], env: str | None, params: dict) -> str:
    """The pipelines, environment and every parameter (`--params` included) of a run."""
    text = json.dumps({"pipelines": sorted(pipelines), "env": env, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_runs(client: mlflow.MlflowClient, experiment_id: str) -> list:
    """Runs still RUNNING whose process, on this host, is gone (killed, e.g. `kill -9`),
    newest first."""
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", order_by=["attributes.start_time DESC"]
    )
    host = socket.gethostname()
    return [r for r in running if r.data.tags.get(HOST_TAG) == host and not _alive(r.data.tags.get(PID_TAG))]


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook, logging node parameters except `RESOLVED_PARAMS`, and
    continuing a killed run: a rerun with the same pipelines, environment and
    parameters (the configuration whose checkpoint it resumes) logs into the MLflow run
    the killed process left RUNNING, so `mlflow ui` shows one run with one history.
    Other killed runs of this host are marked KILLED."""

    @hook_impl
    def after_context_created(self, context) -> None:
        super().after_context_created(context)
        self._params = context.params

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        identity = run_identity(names, run_params.get("env"), getattr(self, "_params", {}))
        tracking = self.mlflow_config.tracking
        claim = _assert_mlflow_enabled(names, self.mlflow_config) and not self._already_active_mlflow and tracking.run.id is None
        if claim:
            tracking.run.id = self._claim_stale_run(identity)
        try:
            super().before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
        finally:
            if claim:  # the claimed id was for this run only
                tracking.run.id = None
        if self._is_mlflow_enabled and mlflow.active_run() is not None:
            mlflow.set_tags({IDENTITY_TAG: identity, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})

    def _claim_stale_run(self, identity: str) -> str | None:
        client = mlflow.MlflowClient()  # kedro-mlflow has set the tracking URI
        experiment = client.get_experiment_by_name(self.mlflow_config.tracking.experiment.name)
        if experiment is None:
            return None
        stale = stale_runs(client, experiment.experiment_id)
        same = next((r for r in stale if r.data.tags.get(IDENTITY_TAG) == identity), None)
        for run in stale:
            if run is not same:
                client.set_terminated(run.info.run_id, "KILLED")
                logger.info("MLflow run %s (%s) was left running by a killed process: marked KILLED", run.info.run_id, run.info.run_name)  # fmt: skip
        if same is None:
            return None
        resumes = int(same.data.tags.get("project.resumes", "0")) + 1
        client.set_tag(same.info.run_id, "project.resumes", str(resumes))
        logger.info(
            "Continuing MLflow run %s (%s), left running by a killed process with these pipelines and parameters",
            same.info.run_id, same.info.run_name,
        )
        return same.info.run_id

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict, is_async: bool) -> None:
        kept = {k: v for k, v in inputs.items() if k not in RESOLVED_PARAMS}
        super().before_node_run(node=node, catalog=catalog, inputs=kept, is_async=is_async)


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
    return out


def resolved_params(trained_model: dict, training_params: dict, tasks_params: dict | None) -> dict:
    """What a trained model was built and trained with, flat: the model as built
    (`model.*`: the chosen preset's towers with vocabulary size and head outputs
    filled in, and `model.parameters`), the training config with its defaults
    (`training.*`) and the active tasks (`tasks.*`)."""
    from dataclasses import asdict

    from ..tasks import TasksConfig
    from ..training.config import TrainConfig

    tasks = TasksConfig.from_dict(tasks_params)
    flat = _flatten("model", trained_model["config"], {})
    flat["model.parameters"] = sum(int(t.numel()) for t in trained_model["state_dict"].values())
    _flatten("training", TrainConfig.from_dict(training_params).to_dict(), flat)
    active = {"active": "+".join(tasks.active), "weighting": tasks.weighting}
    _flatten("tasks", {**active, **{n: asdict(t) for n, t in tasks.selected().items()}}, flat)
    return flat


class ParameterCheckHooks:
    """Build every stage's config from the parameters (`--params` included) as soon as
    the Kedro context exists: a wrong key or value fails in seconds, naming the key,
    before the first node runs. A run that evaluates (`train`, `fit`) also stops right
    after ingestion when the data has no test split, not after training."""

    def __init__(self):
        self._evaluates = False

    @hook_impl
    def after_context_created(self, context) -> None:
        from ..pipelines.parameters import check_parameters, check_starting_point

        check_parameters(context.params)
        if "model" in context.params:
            check_starting_point(context.params["model"], context.config_loader["catalog"].get("initial_weights"))

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._evaluates = any(n.name.rsplit(".", 1)[-1] == "evaluate_model" for n in pipeline.nodes)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if dataset_name == "samples" and self._evaluates:
            require_test_rows(data, "for this run's evaluation, which comes after training")


def run_name(pipeline: str, params: dict) -> str:
    """What tells runs apart in `mlflow ui`: pipeline, source, preset, controller, LR."""
    training = params.get("training") or {}
    controller = (training.get("controller") or {}).get("method", "fixed")
    return " ".join(
        [
            pipeline,
            str((params.get("ingestion") or {}).get("source", "")),
            str((params.get("model") or {}).get("preset", "")),
            str(controller),
            f"lr={training.get('lr')}",
        ]
    )


# `mlflow ui` (3.x) opens an experiment of this kind on its "Training runs" table rather
# than the GenAI overview (traces, token usage).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class MlflowRunHooks:
    """The run kedro-mlflow opened (its hooks run before these): a name from what
    distinguishes it, the experiment tagged as model training (`mlflow ui` opens on its
    runs), the sample table as an input (a digest and schema, not the data) and, after
    a `train` run, the logged model registered with the champion rule."""

    def __init__(self):
        self._run_id = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        run = mlflow.active_run()
        self._run_id = run.info.run_id if run is not None else None
        if run is None:
            return
        params = {k: catalog.load(f"params:{k}") for k in ("ingestion", "model", "training")
                  if catalog.exists(f"params:{k}")}
        pipelines = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        mlflow.set_tag("mlflow.runName", run_name("+".join(pipelines), params))
        client = mlflow.MlflowClient()
        experiment = client.get_experiment(run.info.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    @hook_impl
    def after_node_run(self, node, inputs: dict, outputs: dict) -> None:
        if "trained_model" not in outputs or mlflow.active_run() is None:
            return
        flat = resolved_params(outputs["trained_model"], inputs.get("params:training") or {}, inputs.get("params:tasks"))
        start = inputs.get("initial_weights")  # where the weights started: init.init_from, init.vision, init.text
        flat.update({f"init.{k}": v for k, v in (getattr(start, "sources", None) or {}).items()})
        items = sorted(flat.items())
        for start in range(0, len(items), 100):  # MLflow's batch limit
            mlflow.log_params(dict(items[start : start + 100]))

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if dataset_name != "samples" or mlflow.active_run() is None:
            return
        mlflow.log_input(mlflow.data.from_pandas(data, name="samples"), context="training")
        mlflow.set_tag("data_source", ", ".join(sorted(set(data["source"]))))
        mlflow.set_tag(TEST_SET_TAG, table_fingerprint(data[data["split"] == "test"]))  # what test_accuracy is on

    @hook_impl
    def after_pipeline_run(self, run_params: dict, run_result, pipeline, catalog) -> None:
        from kedro_mlflow.pipeline.pipeline_ml import PipelineML

        from .registry import register_and_promote

        if self._run_id is None or not isinstance(pipeline, PipelineML):
            return  # only a train run logs a model
        try:
            register_and_promote(mlflow.MlflowClient(), self._run_id, f"runs:/{self._run_id}/model")
        except mlflow.exceptions.MlflowException as exc:  # the run and its model stay logged
            logger.warning("Could not register the model of run %s: %s", self._run_id, exc)
