"""Multimodal Doubleloop
"""

__version__ = "0.1"
