"""DIET: dimension-wise global pruning of LLMs by merging task-specific importance scores."""

__version__ = "0.1.0"


class DietError(Exception):
    """A mistake a user can make (bad config value, missing file, no network). run.py prints it as one line and exits 2."""


def flatten(tree: dict, sep: str = ".", skip=None) -> dict:
    """Nested dicts to one level, keys joined by `sep`: {"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}.

    A key for which `skip(str(key))` is true is left out with everything under it. Here, beside DietError, because
    this module imports nothing: every module (profile.py too) can use it without an import cycle.
    """
    flat = {}
    for key, value in tree.items():
        if skip is not None and skip(str(key)):
            continue
        if isinstance(value, dict):
            flat.update({f"{key}{sep}{sub}": v for sub, v in flatten(value, sep, skip).items()})
        else:
            flat[f"{key}"] = value
    return flat
