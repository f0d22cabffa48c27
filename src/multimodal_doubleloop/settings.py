"""Project settings."""

from multimodal_doubleloop.hooks import MlflowVersionedArtifactHooks

HOOKS = (MlflowVersionedArtifactHooks(),)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
