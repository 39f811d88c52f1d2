"""DVC stage `train_dense` (python -m stages.train_dense): see sparsenet.pipeline.train_dense."""

from sparsenet.pipeline.train_dense import train_dense
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(train_dense)
