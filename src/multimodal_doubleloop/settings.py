"""Project settings."""

from multimodal_doubleloop.io.hooks import MlflowVersionedArtifactHooks, ParameterCheckHooks

HOOKS = (ParameterCheckHooks(), MlflowVersionedArtifactHooks())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments (e.g. conf/test) override single nested parameters, not whole sections.
    "merge_strategy": {"parameters": "soft"},
}
