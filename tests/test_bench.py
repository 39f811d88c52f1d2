import json

from sparsenet import bench


def test_benchmark_runs_and_writes_every_ratio(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--prepared", str(tmp_path / "none"), "--models", str(tmp_path / "none"), "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["data"] == "synthetic"
    ratios = [results["training_data_path"]["pipeline_vs_compute_bound"],
              results["training_data_path"]["loader_vs_naive_loader"],
              results["training_step"]["sparse_vs_dense"],
              *results["inference"]["speedup"].values(),
              results["flops"]["fraction_of_matmul"]]
    assert all(ratio > 0 for ratio in ratios)
    inference = results["inference"]
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
