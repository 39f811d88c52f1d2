import json
import math

import pytest

from sparsenet import bench


def test_benchmark_runs_and_writes_every_ratio(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--prepared", str(tmp_path / "none"), "--models", str(tmp_path / "none"), "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["data"] == "synthetic"
    # Each ratio is the quotient of the two measurements it is named after (an inverted or
    # mislabelled ratio fails here), and every measurement is a finite positive number.
    path, step, inference, flops = (results[k] for k in ("training_data_path", "training_step", "inference", "flops"))
    expected = {
        "pipeline_vs_compute_bound": (path["pipeline_vs_compute_bound"], path["pipeline_img_s"], path["compute_bound_img_s"]),
        "loader_vs_naive_loader": (path["loader_vs_naive_loader"], path["loader_only_img_s"], path["naive_loader_only_img_s"]),
        "training_vs_naive_training": (path["training_vs_naive_training"], path["pipeline_img_s"],
                                       path["naive_training_img_s"]),
        "sparse_vs_dense": (step["sparse_vs_dense"], step["sparse_ms"], step["dense_ms"]),
        "fraction_of_matmul": (flops["fraction_of_matmul"], flops["lenet_training_gflops"], flops["matmul_gflops"]),
        **{name: (ratio, inference["images_per_second"][name.split("_vs_")[0]],
                  inference["images_per_second"][name.split("_vs_")[1]])
           for name, ratio in inference["speedup"].items()},
    }
    assert set(inference["speedup"]) == {"sparse_engine_vs_dense_eager", "sparse_engine_vs_dense_engine",
                                         "compact_engine_vs_dense_engine", "compact_engine_vs_dense_eager",
                                         "compact_eager_vs_dense_eager", "dense_engine_vs_dense_eager"}
    for name, (ratio, numerator, denominator) in expected.items():
        assert math.isfinite(numerator) and math.isfinite(denominator) and numerator > 0 and denominator > 0, name
        assert ratio == pytest.approx(numerator / denominator, rel=1e-9), name
    # And each contender is what its name says: facts with margins no machine's drift closes, as the
    # contenders take turns (a swapped pair of contenders, or the wrong model timed, fails here).
    # Measured on the 2-core test machines: the loader 48x the naive one, the 95% model on the
    # engine 2.6x the dense one on the engine.
    assert path["loader_vs_naive_loader"] > 2
    assert path["pipeline_vs_compute_bound"] < 1.3  # the pipeline cannot outrun its own compute
    if inference["engine"] != "pytorch":
        assert inference["speedup"]["sparse_engine_vs_dense_engine"] > 1.2
        assert inference["speedup"]["compact_engine_vs_dense_engine"] > 1.2
    assert inference["models"] == "fresh LeNet, 95% magnitude-pruned"
    assert inference["compact_widths"] == [3, 8, 60, 42]
    assert set(inference["images_per_second"]) == {f"{m}_{how}" for m in ("dense", "sparse", "compact")
                                                   for how in ("eager", "engine")}
    assert set(inference["batch1_latency_ms"]) == {"dense_eager", "sparse_eager", "dense_engine", "sparse_engine"}
    layers = inference["layer_ms"]
    for model in ("dense", "sparse", "compact"):
        assert set(layers[model]) == {"conv1", "conv2", "fc1", "fc2", "fc3", "pooling+relu", "total"}
        assert 0 < layers[model]["conv1"] < layers[model]["total"]
        if inference["engine"] != "pytorch":
            engine_layers = layers[f"{model}_engine"]
            assert len(engine_layers) == 7 and all(ms > 0 for ms in engine_layers.values())
