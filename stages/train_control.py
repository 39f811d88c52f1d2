"""DVC stage `train_control` (python -m stages.train_control): see sparsenet.pipeline.train_control."""

from sparsenet.pipeline.train_control import train_control
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(train_control)
