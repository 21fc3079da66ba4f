import pytest
import torch

from sddkit import pruning


def random_weights(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(30, 20, generator=gen), "b.weight": torch.randn(10, 30, generator=gen),
            "c.weight": torch.randn(8, 3, 3, 3, generator=gen) * 5}


def magnitude_round(weights, masks, k, rate, scope):
    scores = pruning.score({n: w * masks[n] for n, w in weights.items()}, "magnitude")
    return pruning.prune(scores, masks, pruning.density_after(k, rate), scope)


def test_global_magnitude_keeps_every_large_weight_over_every_small_one():
    weights = random_weights()
    masks = magnitude_round(weights, pruning.dense_masks(weights), 1, 0.6, "global")
    kept = torch.cat([weights[n].abs()[masks[n]] for n in weights])
    pruned = torch.cat([weights[n].abs()[~masks[n]] for n in weights])
    assert kept.min() >= pruned.max()
    assert len(pruned) == round(0.6 * sum(w.numel() for w in weights.values()))


def test_layer_scope_prunes_the_same_fraction_of_each_tensor():
    weights = random_weights()
    masks = magnitude_round(weights, pruning.dense_masks(weights), 1, 0.5, "layer")
    for n, w in weights.items():
        assert int((~masks[n]).sum()) == round(0.5 * w.numel())
        assert w.abs()[masks[n]].min() >= w.abs()[~masks[n]].max()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_after_k_rounds_is_one_minus_keep_to_the_k(scope):
    weights = random_weights(1)
    masks = pruning.dense_masks(weights)
    total = sum(w.numel() for w in weights.values())
    for k in range(1, 9):
        previous = masks
        masks = magnitude_round(weights, masks, k, 0.2, scope)
        alive = sum(int(m.sum()) for m in masks.values())
        assert abs(alive - total * 0.8 ** k) <= len(weights)  # within one weight per tensor
        assert all(bool((previous[n] | ~masks[n]).all()) for n in masks)  # pruned weights never come back


def test_random_criterion_never_gives_two_same_shaped_layers_the_same_mask():
    weights = {"x.weight": torch.ones(40, 40), "y.weight": torch.ones(40, 40)}
    gen = torch.Generator().manual_seed(3)
    masks = pruning.prune(pruning.score(weights, "random", gen=gen), pruning.dense_masks(weights), 0.5, "layer")
    assert not torch.equal(masks["x.weight"], masks["y.weight"])
    again = pruning.prune(pruning.score(weights, "random", gen=torch.Generator().manual_seed(3)),
                          pruning.dense_masks(weights), 0.5, "layer")
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_gradient_criterion_scores_weight_times_gradient():
    weights = {"w": torch.tensor([1.0, -2.0, 3.0, 0.5])}
    grads = {"w": torch.tensor([1.0, 1.0, 0.0, -10.0])}
    masks = pruning.prune(pruning.score(weights, "gradient", grads), pruning.dense_masks(weights), 0.5, "global")
    assert masks["w"].tolist() == [False, True, False, True]  # |w·g| = 1, 2, 0, 5


def test_mask_applier_zeroes_exactly_the_pruned_weights():
    weights = {n: torch.nn.Parameter(w.clone()) for n, w in random_weights().items()}
    masks = magnitude_round({n: w.detach() for n, w in weights.items()}, pruning.dense_masks(weights), 1, 0.3,
                            "global")
    before = {n: w.detach().clone() for n, w in weights.items()}
    pruning.MaskApplier(weights, masks)()
    for n, w in weights.items():
        assert bool((w[~masks[n]] == 0).all())
        assert torch.equal(w[masks[n]], before[n][masks[n]])


def test_mask_factors_keep_the_weights_strides_under_channels_last():
    """The fused multiply's fast path (one launch for every tensor on CUDA) needs each factor in its weight's
    strides: a channels_last conv weight gets a channels_last factor, a linear one a contiguous one."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).to(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    names = ["0.weight", "1.weight", "3.weight"]
    assert not params["0.weight"].is_contiguous()  # channels_last indeed
    masks = pruning.prune(pruning.score({n: params[n].detach() for n in names}, "magnitude"),
                          pruning.dense_masks({n: params[n] for n in names}), 0.5, "global")
    apply = pruning.MaskApplier(params, masks)
    assert [f.stride() for f in apply.factors] == [params[n].stride() for n in names]
    apply()
    assert [params[n].stride() for n in names] == [f.stride() for f in apply.factors]  # the layout stays
    assert all(bool((params[n][~masks[n]] == 0).all()) for n in names)


def test_pruned_weights_stay_exactly_zero_through_training():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    params = dict(model.named_parameters())
    names = ["0.weight", "2.weight"]
    masks = pruning.prune(pruning.score({n: params[n] for n in names}, "magnitude"),
                          pruning.dense_masks({n: params[n] for n in names}), 0.4, "global")
    apply = pruning.MaskApplier(params, masks)
    apply()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        apply()
        for n in names:
            assert bool((params[n][~masks[n]] == 0).all())
    assert pruning.sparsity(masks) == pytest.approx(0.6, abs=1 / 260)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "random"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_criterion_and_scope_prunes_to_the_target_and_only_live_weights(criterion, scope):
    weights = random_weights(2)
    grads = {n: torch.randn(w.shape, generator=torch.Generator().manual_seed(5)) for n, w in weights.items()}
    masks = pruning.dense_masks(weights)
    for k in (1, 2, 3):
        gen = torch.Generator().manual_seed(k)
        scores = pruning.score({n: w * masks[n] for n, w in weights.items()}, criterion, grads, gen)
        new = pruning.prune(scores, masks, pruning.density_after(k, 0.3), scope)
        assert all(bool((masks[n] | ~new[n]).all()) for n in new)  # nothing revived
        if scope == "layer":
            for n, w in weights.items():
                assert abs(int(new[n].sum()) - 0.7 ** k * w.numel()) <= 1
        else:
            total = sum(w.numel() for w in weights.values())
            assert abs(sum(int(m.sum()) for m in new.values()) - 0.7 ** k * total) <= 1
        if criterion != "random":  # the kept scores dominate the pruned live ones
            kept = torch.cat([scores[n][new[n]] for n in new])
            dropped = torch.cat([scores[n][masks[n] & ~new[n]] for n in new])
            if scope == "global":
                assert kept.min() >= dropped.max()
        masks = new


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.9])
def test_max_rounds_is_the_last_round_that_leaves_the_smallest_tensor_a_weight_under_layer_pruning(rate):
    weights = random_weights(3)  # 600, 300 and 216 weights
    most, name = pruning.max_rounds({n: w.numel() for n, w in weights.items()}, rate)
    assert name == "c.weight"
    masks = pruning.dense_masks(weights)
    for k in range(1, most + 2):
        masks = magnitude_round(weights, masks, k, rate, "layer")
        assert (int(masks[name].sum()) >= 1) == (k <= most)
        if k == most:
            assert all(int(m.sum()) >= 1 for m in masks.values())  # the larger tensors outlast the smallest


@pytest.mark.parametrize("numel, rate, most", [(1, 0.2, 3), (1000, 0.2, 34), (30000, 0.2, 49), (1000, 0.9999, 0)])
def test_max_rounds_by_hand(numel, rate, most):
    # 0.8³ = 0.51 still rounds to 1, 0.8⁴ = 0.41 to 0; 1000 · 0.8³⁴ = 0.51, 1000 · 0.8³⁵ = 0.41.
    assert pruning.max_rounds({"w": numel}, rate) == (most, "w")


def test_max_rounds_ends_for_a_rate_at_the_edge_of_float_resolution():
    assert pruning.max_rounds({"w": 10}, 1e-300)[0] > 10**9  # 1 - rate == 1.0: no round removes a weight
    assert 10**15 < pruning.max_rounds({"w": 10}, 1e-15)[0] < 10**17
