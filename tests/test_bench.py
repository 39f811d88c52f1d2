import json

from sparsenet import bench


def test_benchmark_runs_and_writes_every_ratio(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--prepared", str(tmp_path / "none"), "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["data"] == "synthetic"
    ratios = [results["training_data_path"]["pipeline_vs_compute_bound"],
              results["training_data_path"]["loader_vs_naive_loader"],
              results["training_step"]["sparse_vs_dense"],
              results["inference"]["compact_vs_dense"],
              results["flops"]["fraction_of_matmul"]]
    assert all(ratio > 0 for ratio in ratios)
    assert results["inference"]["compact_widths"] == [3, 8, 60, 42]
    layers = results["inference"]["layer_ms"]
    for model in ("dense", "compact"):
        assert set(layers[model]) == {"conv1", "conv2", "fc1", "fc2", "fc3", "pooling+relu", "total"}
        assert 0 < layers[model]["conv1"] < layers[model]["total"]
