"""Per-layer sensitivity curves, the allocation they give, and rounding of kept widths."""

import copy

import pytest
import torch

from sparsenet.errors import SparseNetError
from sparsenet.models import SparseNet
from sparsenet.pruning import kept_slices, prune_model
from sparsenet.sensitivity import allocate, measure


def curve_rows(curves: dict[str, tuple[int, list[tuple[float, float]]]]) -> list[dict]:
    return [{"layer": name, "weights": weights, "sparsity": share, "accuracy": 0.9 - drop, "drop": drop}
            for name, (weights, points) in curves.items() for share, drop in points]


def test_allocation_reaches_the_target_and_spares_the_sensitive_layer():
    rows = curve_rows({
        "tough": (1000, [(0.0, 0.0), (0.5, 0.10), (0.9, 0.40)]),   # loses 10 points at half
        "easy": (1000, [(0.0, 0.0), (0.5, 0.00), (0.9, 0.01)]),    # loses nothing up to half
    })
    shares = allocate(rows, 0.5)
    assert (shares["tough"] * 1000 + shares["easy"] * 1000) / 2000 == pytest.approx(0.5, abs=1e-3)
    assert shares["easy"] > 0.85 and shares["tough"] < 0.15
    # Hand check: "easy" at 0.9 costs 0.01 and leaves "tough" 0.1 to take, at 0.02 (0.10 · 0.1 / 0.5):
    # 0.03 in all, against 0.10 for 0.5 each; any other split on the way costs more (both convex).
    assert shares["easy"] == pytest.approx(0.9, abs=2e-3)


def test_allocation_weighs_layers_by_their_weight_counts_and_lands_on_the_target():
    rows = curve_rows({"small": (100, [(0.0, 0.0), (0.9, 0.0)]), "large": (900, [(0.0, 0.0), (0.9, 0.0)])})
    shares = allocate(rows, 0.6)  # no loss anywhere: the blend lands exactly on the target
    assert (shares["small"] * 100 + shares["large"] * 900) / 1000 == pytest.approx(0.6, abs=1e-6)


def test_allocation_that_cannot_reach_the_target_says_so():
    rows = curve_rows({"a": (10, [(0.0, 0.0), (0.5, 0.1)]), "b": (10, [(0.0, 0.0), (0.5, 0.2)])})
    with pytest.raises(SparseNetError) as error:
        allocate(rows, 0.8)
    assert str(error.value) == ("prune.sparsity = 0.8 cannot be reached with prune.allocation = 'sensitivity': the "
                                "layers it prunes, each at most at its largest measured share (a 0.5, b 0.5), reach "
                                "0.5000; expected prune.sparsity <= 0.5000 or fewer layers in prune.exclude")


def test_measure_prunes_one_layer_at_a_time_and_leaves_the_model_alone(dense):
    sparse = SparseNet.from_dense(dense)
    torch.manual_seed(1)
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    loader = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    rows = measure(sparse, loader, "structured", "filters", "l2", shares=(0.0, 0.5, 0.9))
    assert [(r["layer"], r["share"]) for r in rows][:3] == [("conv1", 0.0), ("conv1", 0.5), ("conv1", 0.9)]
    # whole filters: conv1 at 0.9 removes 5 of its 6 (one always stays), fc1 at 0.9 108 of 120
    assert [round(r["sparsity"], 4) for r in rows][:3] == [0.0, 0.5, round(5 / 6, 4)]
    assert {r["layer"] for r in rows} == {"conv1", "conv2", "fc1", "fc2"}  # filters never prune fc3
    assert all(layer.mask.all() for _, layer in sparse.sparse_layers())
    with torch.no_grad():
        base = (sparse(images).argmax(1) == labels).float().mean().item()
        # fc1 alone at 0.9, by hand: its 12 rows of largest L2 norm stay, the other 108 and their biases go
        one = copy.deepcopy(dense)
        gone = one.fc1.weight.norm(dim=1).argsort(descending=True)[12:]
        one.fc1.weight[gone], one.fc1.bias[gone] = 0.0, 0.0
        expected = (one(images).argmax(1) == labels).float().mean().item()
    fc1 = next(r for r in rows if r["layer"] == "fc1" and r["share"] == 0.9)
    assert fc1["sparsity"] == pytest.approx(0.9)
    assert fc1["accuracy"] == pytest.approx(expected) and fc1["drop"] == pytest.approx(base - expected)
    assert fc1["weights"] == sparse.fc1.weight.numel()


@pytest.mark.parametrize("count, amount, round_to, kept", [
    (120, 0.5, 1, 60), (120, 0.5, 8, 64), (84, 0.5, 8, 40), (16, 0.9, 8, 8),
    (6, 0.5, 8, 3),  # no more slices than round_to: unrounded
    (84, 0.0, 8, 84), (100, 0.0, 8, 100),  # nothing to prune: nothing rounded away
    (100, 0.5, 8, 48), (84, 0.25, 8, 64),  # 50 → 48; 63 → 64
    (120, 0.3, 8, 88),  # 84 = 10.5 · 8: a half rounds up (88), not to the even 80
    (16, 0.99, 1, 1),  # one always survives
])
def test_kept_slices_round_to_a_multiple(count, amount, round_to, kept):
    assert kept_slices(count, amount, round_to) == kept


def test_round_to_gives_structured_widths_in_multiples(sparse):
    prune_model(sparse, "structured", 0.5, round_to=8)
    alive = {name: int(layer.mask.flatten(1).any(dim=1).sum()) for name, layer in sparse.sparse_layers()}
    assert alive == {"conv1": 3, "conv2": 8, "fc1": 64, "fc2": 40, "fc3": 10}


def test_layer_amounts_give_each_layer_its_own_share(sparse):
    prune_model(sparse, "structured", 0.5, layer_amounts={"conv1": 0.0, "conv2": 0.25, "fc1": 0.5, "fc2": 0.75})
    alive = {name: int(layer.mask.flatten(1).any(dim=1).sum()) for name, layer in sparse.sparse_layers()}
    assert alive == {"conv1": 6, "conv2": 12, "fc1": 60, "fc2": 21, "fc3": 10}


def test_allocation_minimises_the_summed_drop_not_the_largest_one():
    # "steep" loses 0.10 linearly up to 0.9; "flat" loses 0.05 at once, then little more up to 0.9.
    # Equal drops (a common threshold) would give about 0.5 / 0.5 and lose 0.110 in all; the least
    # summed drop prunes "flat" to 0.9 and "steep" to 0.1: 0.06 + 0.011 = 0.071.
    rows = curve_rows({"steep": (1000, [(0.0, 0.0), (0.9, 0.10)]),
                       "flat": (1000, [(0.0, 0.0), (0.1, 0.05), (0.9, 0.06)])})
    shares = allocate(rows, 0.5)
    assert shares["flat"] == pytest.approx(0.9, abs=2e-3) and shares["steep"] == pytest.approx(0.1, abs=2e-3)


def test_allocation_matches_a_brute_force_search_on_convex_curves():
    import itertools

    import numpy as np

    curves = {"a": (450, [(0.0, 0.0), (0.5, 0.02), (0.9, 0.2)]), "b": (2400, [(0.0, 0.0), (0.5, 0.01), (0.9, 0.05)]),
              "c": (30000, [(0.0, 0.0), (0.5, 0.002), (0.9, 0.03)])}
    rows = curve_rows(curves)
    target = 0.7
    shares = allocate(rows, target)
    total = sum(w for w, _ in curves.values())

    def drop(name, share):
        points = curves[name][1]
        return float(np.interp(share, [p for p, _ in points], [d for _, d in points]))

    grid = np.round(np.arange(0, 0.9001, 0.01), 2)
    best = min(sum(drop(n, s) for n, s in zip(curves, combo))
               for combo in itertools.product(grid, repeat=3)
               if sum(curves[n][0] * s for n, s in zip(curves, combo)) / total >= target)
    ours = sum(drop(name, share) for name, share in shares.items())
    assert sum(curves[n][0] * shares[n] for n in curves) / total == pytest.approx(target, abs=1e-4)
    assert ours <= best + 1e-3


def test_sensitivity_options_are_validated_with_the_params_file(tmp_path, monkeypatch, capsys):
    from sparsenet.sensitivity_tool import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prune:\n  method: magnitude\n  exclude: [conv1, conv2, fc1, fc2]\n")
    with pytest.raises(SystemExit) as exit_info:  # valid for magnitude; structured would prune nothing
        main(["--method", "structured", "--csv", str(tmp_path / "s.csv"), "--png", str(tmp_path / "s.png")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: params.yaml with --method structured: prune.exclude") and len(error.splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()
