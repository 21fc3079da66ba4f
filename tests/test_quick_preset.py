"""The quick preset's promise, on the project's own code: sparse double descent for seeds 0, 1 and 2.

Slow (about 1.5 min of CPU per seed): ``python -m pytest -m slow``. bench/quick_preset.py prints the same
figures with timings.
"""
import pytest

from sddkit import analysis, runner
from sddkit.config import load_config


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quick_preset_shows_sparse_double_descent(project, tmp_path, seed):
    cfg = load_config(overrides={"seed": seed, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"})
    _, rows = runner.run_trajectory(cfg, project, quiet=True)
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold)
    margins = analysis.double_descent_margins(rows, ph)
    assert margins["dip"] >= 3.0, f"minimum not 3 points below dense: {margins}"
    assert margins["rise"] >= 8.0, f"peak not 8 points above the minimum: {margins}"
    assert margins["drop"] >= 5.0, f"last not 5 points below the peak: {margins}"
