"""DIET: dimension-wise global pruning of LLMs by merging task-specific importance scores."""

__version__ = "0.1.0"


class DietError(Exception):
    """A mistake a user can make (bad config value, missing file, no network). run.py prints it as one line and exits 2."""
