"""sddkit: a reproducibility kit for sparse double descent.

The Python API lives in ``sddkit.api`` and is offered here: ``load_trajectory`` (stored trajectories as a pandas
DataFrame, a row a round), ``load_round`` (a round's mask and weights by trajectory name and round),
``load_mask`` and ``load_weights`` (by round run ID), and their errors ``TrackingError`` and ``NoProjectError``.
It is imported on first use (PEP 562): it brings torch, mlflow and pandas, and ``sddkit --help`` stays instant.
"""
__version__ = "0.1.0"

API = ("load_trajectory", "load_round", "load_mask", "load_weights", "TrackingError", "NoProjectError")


def __getattr__(name: str):
    if name in API:
        from sddkit import api
        return getattr(api, name)
    raise AttributeError(f"module 'sddkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})


__all__ = [*API, "__version__"]
