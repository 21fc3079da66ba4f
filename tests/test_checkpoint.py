"""Sparse checkpoints: a round's weights stored as the values its mask keeps plus the tensors no mask covers,
read back as the dense state dict bit for bit; runs stored before (dense weights.pt) still load; a file that is
damaged or does not fit its mask is refused in one line, never filled in wrongly."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

import sddkit
from sddkit import checkpoint, runner, tracking
from sddkit.config import load_config
from sddkit.checkpoint import pack_mask
from sddkit.tracking import ROUND, Tracker, TrackingError, read_mask, read_weights
from test_resume import round_runs


def small_model_state() -> tuple[dict[str, torch.Tensor], list[str]]:
    """A conv, a batch norm (float params, float and int64 buffers), a linear with a bias: the state dict and
    the names a mask covers (the conv and linear weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4, 5))
    model[1].running_mean.normal_()
    model[1].num_batches_tracked.fill_(7)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, ["0.weight", "3.weight"]


def masked(state, names, density, gen_seed=1):
    """``state`` with a random mask keeping about ``density`` of each named tensor; pruned weights hold ±0 and
    one NaN, as the mask applier leaves them (w · 0, and NaN · 0 after a diverged step)."""
    gen = torch.Generator().manual_seed(gen_seed)
    masks = {n: torch.rand(state[n].shape, generator=gen) < density for n in names}
    out = dict(state)
    for n in names:
        out[n] = state[n] * masks[n]  # negative weights become −0.0
        out[n].view(-1)[(~masks[n]).view(-1).nonzero()[0]] = float("nan")
    return out, masks


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def assert_dense_copy(loaded, stored, masks):
    """``loaded`` is ``stored`` as the documented loaders must give it back: the same keys in the same order,
    dtypes and shapes, on the CPU, the kept values bit for bit and +0.0 wherever a mask prunes."""
    assert list(loaded) == list(stored)
    for name, value in stored.items():
        got = loaded[name]
        assert got.dtype == value.dtype and got.shape == value.shape and got.device.type == "cpu", name
        keep = masks[name] if name in masks else torch.ones_like(value, dtype=torch.bool)
        assert torch.equal(bits(got)[keep], bits(value.cpu())[keep]), name
        assert torch.equal(bits(got)[~keep], bits(torch.zeros_like(got))[~keep]), name  # +0.0, never −0 or NaN


# ---------------------------------------------------------------- the format

def test_a_sparse_file_holds_the_kept_values_and_reads_back_as_the_dense_state_bit_for_bit():
    state, names = small_model_state()
    weights, masks = masked(state, names, 0.1)

    stored = torch.load(io.BytesIO(checkpoint.to_bytes(weights, masks)), weights_only=True)

    assert checkpoint.is_sparse(stored) and stored["sparse"] == names
    for n in names:  # the kept values in the mask's order, nothing else
        assert torch.equal(stored["tensors"][n], weights[n].masked_select(masks[n]))
    assert torch.equal(stored["tensors"]["1.num_batches_tracked"], torch.tensor(7))
    assert_dense_copy(checkpoint.unpack(stored, masks), weights, masks)


def test_a_dense_round_and_an_empty_tensor_round_trip_too():
    state, names = small_model_state()
    full = {n: torch.ones_like(state[n], dtype=torch.bool) for n in names}
    none = {**full, "3.weight": torch.zeros_like(state["3.weight"], dtype=torch.bool)}
    for masks in (full, none):
        weights = {k: v * masks[k] if k in masks else v for k, v in state.items()}
        stored = torch.load(io.BytesIO(checkpoint.to_bytes(weights, masks)), weights_only=True)
        assert_dense_copy(checkpoint.unpack(stored, masks), weights, masks)


def test_a_weight_left_where_its_mask_prunes_is_refused_rather_than_dropped():
    state, names = small_model_state()
    masks = {n: torch.rand(state[n].shape) < 0.5 for n in names}
    with pytest.raises(ValueError, match="0.weight holds non-zero values where its mask prunes it"):
        checkpoint.to_bytes(state, masks)


@pytest.mark.parametrize("change", ["one more kept", "one fewer kept", "another name", "a newer version"])
def test_a_file_that_does_not_fit_its_mask_is_refused(change):
    state, names = small_model_state()
    weights, masks = masked(state, names, 0.3)
    stored = torch.load(io.BytesIO(checkpoint.to_bytes(weights, masks)), weights_only=True)
    other = {n: m.clone() for n, m in masks.items()}
    flat = other["3.weight"].view(-1)
    if change == "one more kept":
        flat[(~flat).nonzero()[0]] = True
    elif change == "one fewer kept":
        flat[flat.nonzero()[0]] = False
    elif change == "another name":
        other["2.weight"] = other.pop("3.weight")
    else:
        stored["version"] = checkpoint.VERSION + 1
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.unpack(stored, other)


# ---------------------------------------------------------------- on a real store

# LeNet-300-100 (its output layer kept dense), 3 rounds at rate 0.55: round 3 is 1 − 0.45³ ≈ 90.9% sparse.
HIGH_SPARSITY = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 3, "prune.rate": 0.55,
                 "train.batch_size": 64, "train.milestones": [], "train.threads": 1}


def artifact_path(client: MlflowClient, run_id: str, path: str) -> Path:
    return Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / path


@pytest.fixture
def high_sparsity_run(project, tmp_path, monkeypatch):
    """A finished trajectory at ~91% sparsity, with the weights each round handed to the store (in memory)."""
    cfg = load_config(overrides={**HIGH_SPARSITY, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"})
    handed = {}
    log_round = tracking.TrajectoryRun.log_round

    def keep_a_copy(self, round_index, metrics, history, masks, weights):
        handed[round_index] = ({k: v.clone() for k, v in weights.items()}, {k: m.clone() for k, m in masks.items()})
        return log_round(self, round_index, metrics, history, masks, weights)
    monkeypatch.setattr(tracking.TrajectoryRun, "log_round", keep_a_copy)
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    client = MlflowClient(cfg.tracking.uri)
    rounds = [r.info.run_id for r in round_runs(client, store.run_id) if r.info.status == "FINISHED"]
    return cfg, client, store, rows, rounds, handed


def test_each_round_stores_no_more_than_its_kept_weights_and_reads_back_exactly(high_sparsity_run):
    cfg, client, store, rows, rounds, handed = high_sparsity_run
    assert len(rounds) == 4 and rows[-1]["sparsity"] == pytest.approx(1 - 0.45 ** 3, abs=1e-3)
    for r, run_id in enumerate(rounds):
        weights, masks = handed[r]
        stored = artifact_path(client, run_id, "weights.pt").stat().st_size
        allowed = 1.1 * checkpoint.payload(weights, masks) + 64 * 1024
        assert stored <= allowed, f"round {r}: {stored:,} bytes, allowed {allowed:,.0f}"
        assert_dense_copy(sddkit.load_weights(run_id, cfg.tracking.uri), weights, masks)
    dense = sum(t.numel() * 4 for t in handed[3][0].values())
    assert artifact_path(client, rounds[3], "weights.pt").stat().st_size < 0.15 * dense  # ~91% of it pruned


def test_bytes_needed_bounds_the_trajectory_and_shrinks_with_the_prunable_names(high_sparsity_run):
    cfg, client, store, rows, rounds, handed = high_sparsity_run
    stored = sum(f.stat().st_size for f in artifact_path(client, store.run_id, "").parent.parent.rglob("*")
                 if f.is_file())  # the experiment's folder: parent and round runs, all artifacts
    state, masks = handed[0]
    dense = checkpoint.bytes_needed(state, len(rounds))
    sparse = checkpoint.bytes_needed(state, len(rounds), list(masks), cfg.prune.rate)
    assert stored <= sparse < dense


def test_a_truncated_sparse_weights_file_gives_one_line_naming_the_run_and_the_file(high_sparsity_run):
    cfg, client, store, rows, rounds, handed = high_sparsity_run
    weights = artifact_path(client, rounds[2], "weights.pt")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(TrackingError) as caught:
        sddkit.load_weights(rounds[2], cfg.tracking.uri)
    message = str(caught.value)
    assert "\n" not in message and rounds[2] in message and "weights.pt is corrupt or unreadable" in message
    assert "--redo-from 2" in message


def test_sparse_weights_under_a_mask_that_keeps_another_count_are_refused_as_corrupt(high_sparsity_run):
    cfg, client, store, rows, rounds, handed = high_sparsity_run
    # Round 3's weights beside round 2's mask (which keeps more): never expanded into the wrong places.
    artifact_path(client, rounds[3], "mask.npz").write_bytes(artifact_path(client, rounds[2], "mask.npz").read_bytes())
    with pytest.raises(TrackingError) as caught:
        sddkit.load_weights(rounds[3], cfg.tracking.uri)
    message = str(caught.value)
    assert "\n" not in message and rounds[3] in message
    assert "weights.pt is corrupt or does not fit the round's mask.npz" in message and "its mask keeps" in message


def test_a_round_stored_dense_before_sparse_checkpoints_still_loads(project, tmp_path):
    """A round written the old way (its dense state dict, torch.save'd as weights.pt) into a real sqlite store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, project)
    state, names = small_model_state()
    weights, masks = masked(state, names, 0.2)
    weights = {k: torch.nan_to_num(v, nan=0.0) for k, v in weights.items()}  # keep −0.0: stored as it was
    parent = tracker.client.create_run(tracker.experiment_id("old"), tags={"sddkit.kind": "trajectory"}).info.run_id
    child = tracker.client.create_run(tracker.experiment_id("old"), tags={
        "mlflow.parentRunId": parent, "sddkit.kind": ROUND, "sddkit.round": "1"}).info.run_id
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    tracker.log_files(child, {"mask.npz": pack_mask(masks), "weights.pt": buffer.getvalue()})

    for loaded in (read_weights(tracker, child), sddkit.load_weights(child, uri)):
        assert list(loaded) == list(weights)
        assert all(torch.equal(bits(loaded[k]), bits(v)) for k, v in weights.items())  # as stored, −0.0 too
    assert read_mask(tracker, child).keys() == masks.keys()
