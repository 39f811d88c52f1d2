"""DVC stage `train_dense`: see sparsenet.pipeline.train_dense."""

from sparsenet.pipeline import run_stage

if __name__ == "__main__":
    run_stage("train_dense")
