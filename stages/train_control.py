"""DVC stage `train_control`: see sparsenet.pipeline.train_control."""

from sparsenet.pipeline import run_stage

if __name__ == "__main__":
    run_stage("train_control")
