"""sddkit: a reproducibility kit for sparse double descent.

Heavy libraries (torch, mlflow) are imported lazily so that ``sddkit --help`` stays instant.
"""
__version__ = "0.1.0"


def load_mask(run_id: str, tracking_uri: str | None = None):
    """A round's mask: dict of parameter name -> bool tensor, from a nested (round) run ID."""
    from sddkit import tracking
    return tracking.load_mask(run_id, tracking_uri)


def load_weights(run_id: str, tracking_uri: str | None = None):
    """A round's final weights (a state dict), from a nested (round) run ID."""
    from sddkit import tracking
    return tracking.load_weights(run_id, tracking_uri)


__all__ = ["load_mask", "load_weights", "__version__"]
