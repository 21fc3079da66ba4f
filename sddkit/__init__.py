"""sddkit: a reproducibility kit for sparse double descent.

The Python API (``sddkit.api``: ``load_trajectory``, ``load_round``, ``load_mask``, ``load_weights`` and their
errors) is offered here, imported on first use (PEP 562) so that ``sddkit --help`` stays instant.
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
