"""Project settings."""

from pathlib import Path

from kedro.utils import find_kedro_project

from multimodal_doubleloop.data.sources.easy_vqa import package_data
from multimodal_doubleloop.io.hooks import (
    MlflowRunHooks,
    MlflowVersionedArtifactHooks,
    ParameterCheckHooks,
    ProjectMlflowHook,
)


def project_root() -> str:
    """`${project_root:}`: the project folder, found from the working directory (a
    notebook in notebooks/ and `kedro run` at the root both get the root)."""
    return str(find_kedro_project(Path.cwd()) or Path.cwd())


# kedro-mlflow's hook comes from here, not its plugin entry point: the project's
# subclass logs the model, training and tasks parameters resolved (io.hooks). Hooks
# registered later run first, so it opens the MLflow run before the others use it.
HOOKS = (ParameterCheckHooks(), MlflowVersionedArtifactHooks(), MlflowRunHooks(), ProjectMlflowHook())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # the name its metadata gives, and the usual spelling

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments (e.g. conf/test) override single nested parameters, not whole sections.
    "merge_strategy": {"parameters": "soft"},
    # `${easy_vqa_data:}` in the catalog: the embedded default data, inside the easy-vqa package
    # `${project_root:}` in mlflow.yml: one MLflow store whatever the working directory
    "custom_resolvers": {"easy_vqa_data": package_data, "project_root": project_root},
}
