"""Command-line entry points beside `kedro run`: `torchrun` (training under torchrun
from the catalog) and `predict` (one answer from the shell). Not named `cli`: Kedro
loads a project's `<package>.cli` as its own command group."""
