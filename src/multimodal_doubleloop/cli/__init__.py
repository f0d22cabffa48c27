"""Command-line entry points beside `kedro run`: `torchrun` (training under torchrun
from the catalog) and `predict` (one answer from the command line)."""
