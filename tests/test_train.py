"""What must hold before training runs on a GPU, checked through its CPU equivalents: analyses in fp32 while
training uses the mixed-precision autocast, channels_last batches for channels_last models, and model
initialisation that leaves the global generators as it found them."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from sddkit import data, models, redense, seeds, train, trajectory
from sddkit.config import TrainConfig, load_config

TIMM_ARCHS = ("resnet18", "resnet34", "resnet101", "vgg11_bn", "vgg16_bn")


def tiny_splits(channels: int = 1, size: int = 8, n: int = 64, classes: int = 4, **options) -> data.Splits:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    stats = torch.full((1, channels, 1, 1), 0.5), torch.full((1, channels, 1, 1), 0.25)
    return data.Splits(x, y, x[: n // 2].clone(), y[: n // 2].clone(), classes, *stats, **options)


def record_output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    dtypes = []
    model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    return dtypes


# ---------------------------------------------------------------- precision

def test_analyses_run_in_fp32_while_training_uses_the_mixed_precision_autocast(monkeypatch):
    splits = tiny_splits()
    torch.manual_seed(0)
    model = models.build("lenet300_100", splits.num_classes, splits.input_shape)
    dtypes = record_output_dtypes(model)
    cfg, labels, idx = TrainConfig(epochs=1, batch_size=16, eval_batch_size=32), splits.y_train_clean, torch.arange(32)
    ctx = types.SimpleNamespace(model=model, splits=splits, noisy=labels, cfg=types.SimpleNamespace(train=cfg),
                                train_idx=idx)

    def analyses() -> tuple:
        state = trajectory.snapshot(model)
        return (train.predict(model, splits, splits.x_test, 32, mixed_precision=False),
                train.evaluate_round(model, splits, labels, cfg, idx, mixed_precision=False),
                redense.evaluate(ctx, state),  # what interpolation and the landscape evaluate
                train.accumulate_gradients(model, splits, labels, ["1.weight", "5.weight"], 2, 16,
                                           torch.Generator().manual_seed(3)))

    # The CPU's bf16 autocast stands in for CUDA's as the one training uses.
    monkeypatch.setattr(train, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    train.fit(model, splits, labels, cfg, train.Generators(torch.Generator().manual_seed(1), None))
    assert torch.bfloat16 in dtypes  # the training steps did run in bf16
    dtypes.clear()
    mixed = train.predict(model, splits, splits.x_test, 32, mixed_precision=True)
    assert set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    logits, metrics, redense_metrics, grads = analyses()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 even when called inside an enabled region
        nested = train.predict(model, splits, splits.x_test, 32, mixed_precision=False)
    assert set(dtypes) == {torch.float32}
    assert logits.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads.values())

    monkeypatch.undo()  # the plain fp32 references, same weights
    ref_logits, ref_metrics, ref_redense, ref_grads = analyses()
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(nested, ref_logits)
    assert metrics == pytest.approx(ref_metrics, rel=1e-5, nan_ok=True)
    assert redense_metrics == pytest.approx(ref_metrics, rel=1e-5, nan_ok=True)
    assert ref_redense == pytest.approx(ref_metrics, rel=1e-5, nan_ok=True)
    for name, grad in grads.items():  # gradients are small: a relative tolerance, not assert_close's atol 1e-5
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-8)
    # The comparison can fail: bf16 logits are visibly off the fp32 ones.
    assert not torch.allclose(mixed, ref_logits, rtol=1e-4, atol=1e-5)


def test_gradient_scores_default_to_fp32(monkeypatch):
    splits = tiny_splits()
    torch.manual_seed(0)
    model = models.build("lenet300_100", splits.num_classes, splits.input_shape)

    def grads(**flag):
        return train.accumulate_gradients(model, splits, splits.y_train_clean, ["1.weight"], 2, 16,
                                          torch.Generator().manual_seed(3), **flag)["1.weight"]

    reference = grads()
    monkeypatch.setattr(train, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    torch.testing.assert_close(grads(), reference, rtol=1e-5, atol=1e-8)  # trajectory's call passes no flag
    assert not torch.allclose(grads(mixed_precision=True), reference, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- channels_last

def test_splits_give_channels_last_batches_only_when_asked():
    plain, last = tiny_splits(3, 8, augment=True), tiny_splits(3, 8, augment=True, channels_last=True)
    idx, gen = torch.arange(4), lambda: torch.Generator().manual_seed(0)
    assert plain.train_batch(idx, gen()).is_contiguous()
    batch = last.train_batch(idx, gen())
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    assert torch.equal(batch, plain.train_batch(idx, gen()))  # same values, other layout
    assert last.normalise(last.x_test).is_contiguous(memory_format=torch.channels_last)  # evaluation too
    assert last.to(torch.device("cpu")).channels_last and not plain.to(torch.device("cpu")).channels_last


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_one_channels_last_training_step_of_every_timm_backbone(arch):
    splits = tiny_splits(3, 32, n=4, classes=10, augment=True, channels_last=True)
    torch.manual_seed(0)
    model = models.build(arch, 10, splits.input_shape, "open_lth").to(memory_format=torch.channels_last)
    idx = torch.tensor([0, 3])
    x, y = splits.train_batch(idx, torch.Generator().manual_seed(0)), splits.y_train_clean[idx]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    with torch.no_grad():  # the layout changes kernels, not answers
        model.eval()
        torch.testing.assert_close(model(x), model(x.contiguous()), rtol=1e-4, atol=1e-4)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 10) and bool(torch.isfinite(loss))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------- generators

def fresh(round_index: int = 0) -> torch.nn.Module:
    cfg = load_config(preset="quick")
    return trajectory.fresh_model(cfg, types.SimpleNamespace(num_classes=10, input_shape=(1, 14, 14)), round_index)


def test_fresh_model_reseeds_no_global_generator(monkeypatch):
    cfg = load_config(preset="quick")
    torch.manual_seed(seeds.derive(cfg.seed, "init", 1))  # what fresh_model seeded before: same weights now
    expected = models.build(cfg.model.arch, 10, (1, 14, 14), cfg.model.init).state_dict()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    reseeded = []  # torch.manual_seed reseeds every CUDA generator through these, even without a GPU
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeded.append)
    got = fresh(1).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert reseeded == []
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_fresh_model_leaves_the_cuda_generators_alone():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    torch.cuda.manual_seed_all(123)
    before = torch.cuda.get_rng_state_all()
    fresh()
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), before))


# ---------------------------------------------------------------- the paper's protocol: warmup, precision, shards

def recorded_lrs(monkeypatch, cfg: TrainConfig, splits: data.Splits, start_step: int = 0) -> list[float]:
    """The lr of every optimizer step of one ``train.fit``, as the optimizer held it."""
    lrs, real_step = [], train.train_step

    def spy(model, optimizer, x, y, *settings):
        lrs.append(optimizer.param_groups[0]["lr"])
        return real_step(model, optimizer, x, y, *settings)
    monkeypatch.setattr(train, "train_step", spy)
    torch.manual_seed(0)
    model = models.build("lenet300_100", splits.num_classes, splits.input_shape)
    train.fit(model, splits, splits.y_train_clean, cfg, train.Generators(torch.Generator().manual_seed(1), None),
              start_step=start_step)
    return lrs


def test_warmup_lr_at_step_t_is_lr_times_t_over_warmup_steps_then_the_schedule(monkeypatch):
    splits = tiny_splits(n=40)  # batch 8: 5 steps an epoch
    cfg = TrainConfig(lr=0.2, schedule="multistep", milestones=[3], gamma=0.1, epochs=4, batch_size=8,
                      warmup_epochs=2)
    warmup = 2 * 5
    # open_lth's LambdaLR: lr · min(1, t / warmup) · gamma^(milestones passed), t the 0-based step (step 0: lr 0).
    expected = [0.2 * min(1.0, t / warmup) * 0.1 ** (t >= 3 * 5) for t in range(4 * 5)]
    assert recorded_lrs(monkeypatch, cfg, splits) == pytest.approx(expected, rel=1e-12, abs=0)
    assert [0.2 * train.lr_factor(cfg, t, 5) for t in range(20)] == pytest.approx(expected, rel=1e-12, abs=0)
    # A round restarted at the rewind step k runs the same absolute lrs (the paper advances its schedule by k).
    assert recorded_lrs(monkeypatch, cfg, splits, start_step=7) == pytest.approx(expected[7:], rel=1e-12, abs=0)
    # No warmup (the default) leaves the schedule as it was.
    plain = TrainConfig(lr=0.2, schedule="multistep", milestones=[3], gamma=0.1, epochs=4, batch_size=8)
    assert [train.lr_factor(plain, t, 5) for t in range(20)] == [0.1 ** (t >= 15) for t in range(20)]


def test_fp32_training_precision_runs_no_bf16_and_accuracy_is_always_fp32(monkeypatch):
    splits = tiny_splits()
    # The CPU's bf16 autocast stands in for CUDA's, as in the test above.
    monkeypatch.setattr(train, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    trained = {}
    for setting in ("bf16", "fp32"):
        torch.manual_seed(0)
        model = models.build("lenet300_100", splits.num_classes, splits.input_shape)
        dtypes = record_output_dtypes(model)
        cfg = TrainConfig(epochs=1, batch_size=16, precision=setting)
        train.fit(model, splits, splits.y_train_clean, cfg, train.Generators(torch.Generator().manual_seed(1), None))
        trained[setting] = set(dtypes)
        dtypes.clear()
        # Test and train accuracy, as the trajectory asks for them (no flag): fp32 whatever the training precision.
        train.predict(model, splits, splits.x_test, 32)
        train.evaluate_round(model, splits, splits.y_train_clean, cfg, torch.arange(32))
        assert set(dtypes) == {torch.float32}, setting
    assert torch.bfloat16 in trained["bf16"] and trained["fp32"] == {torch.float32}


class TinyBatchNormNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).relu().mean(dim=(2, 3)))


def test_batch_norm_shards_compute_statistics_per_shard_and_keep_the_first_shards_running_stats():
    x = torch.randn(20, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = TinyBatchNormNet().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    sharded = train.sharded_forward(net, x, 4)
    after = {k: v.clone() for k, v in net.state_dict().items()}
    # DataParallel on 4 devices: torch.chunk's 4 shards of 5, each normalised by its own statistics...
    separate = []
    for index, chunk in enumerate(x.chunk(4)):
        net.load_state_dict(state)
        separate.append(net(chunk))
        if index == 0:
            first = {k: v.clone() for k, v in net.state_dict().items()}
    torch.testing.assert_close(sharded, torch.cat(separate))
    net.load_state_dict(state)
    assert not torch.allclose(sharded, net(x))  # not the whole batch's statistics
    # ... and the running statistics (and batch count) of the first replica only, as DataParallel keeps them.
    for key in ("norm.running_mean", "norm.running_var", "norm.num_batches_tracked"):
        assert torch.equal(after[key], first[key]), key
    assert net.norm.momentum == 0.1  # restored


def test_a_training_step_over_shards_averages_the_loss_over_the_whole_batch():
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    grads = {}
    for shards in (1, 2):
        torch.manual_seed(0)
        net = TinyBatchNormNet().train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: only the gradient matters here
        logits, loss = train.train_step(net, optimizer, x, y, False, shards)
        assert logits.shape == (16, 5) and loss.dim() == 0
        grads[shards] = net.head.weight.grad.clone()
        if shards == 2:
            torch.manual_seed(0)
            ref = TinyBatchNormNet().train()
            logits_ref = torch.cat([ref(chunk) for chunk in x.chunk(2)])  # fresh per-shard statistics
            F.cross_entropy(logits_ref, y).backward()  # mean over all 16, as DataParallel's gathered output
            torch.testing.assert_close(grads[2], ref.head.weight.grad)
    assert not torch.allclose(grads[1], grads[2])  # the shard statistics do change the gradient
