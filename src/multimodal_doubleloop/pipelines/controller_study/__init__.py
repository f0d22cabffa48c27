"""Controller study: fixed schedule vs hypergradient descent vs the double-loop
controller, across base learning rates, on the CPU preset."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
