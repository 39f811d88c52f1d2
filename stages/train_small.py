"""DVC stage `train_small` (python -m stages.train_small): see sparsenet.pipeline.train_small."""

from sparsenet.pipeline.train_small import train_small
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(train_small)
