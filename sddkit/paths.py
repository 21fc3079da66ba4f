"""Where the project lives, resolved without heavy imports (the CLI needs it at start-up)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT_MARKERS = ("params.yaml", "dvc.yaml", ".git")


def project_root() -> Path:
    """``DVC_ROOT`` inside DVC stages, else the nearest folder above the working directory holding
    params.yaml, dvc.yaml or .git, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return here


def tracking_uri(config_uri: str | None = None, root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``, else sqlite mlflow.db at the project root."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if config_uri:
        return config_uri
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"
