"""bench/gpu_check.py, the script to run first on a lent GPU, works here: on the CPU at its tiny size, every
check prints its row and the CUDA-only ones say they were skipped."""
import os
import subprocess
import sys
from pathlib import Path

import sddkit

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_the_gpu_check_runs_on_the_cpu_and_prints_one_table():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(SDDKIT_NO_DOWNLOAD="1", PYTHONPATH=str(Path(sddkit.__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, str(BENCH), "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("gpu check on cpu")[1]
    for check in ("loop: fp32, channels_last on", "loop: fp32, channels_last off", "loop: bf16",
                  "mask pass: factors in the weights' strides", "mask pass: contiguous factors"):
        assert check in table, table
    assert "ratio" in table.split("channels_last on")[1].splitlines()[0]
    rows = {line.split("  ")[0]: line for line in table.splitlines() if line.strip()}
    assert rows["mask pass: factors keep channels_last strides"].endswith("yes")
    assert rows["cudnn.benchmark: train.deterministic False"].endswith("True")
    assert rows["cudnn.benchmark: train.deterministic True"].endswith("False")
    assert any(k.startswith("stop after round 1, resume") and v.endswith("equal metrics") for k, v in rows.items())
    assert "skipped (no CUDA)" in rows["4 LeNet on one GPU: --gpus-per-trajectory 0.25"]
