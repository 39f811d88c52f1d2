"""DVC stage `prune_train` (python -m stages.prune_train): see sparsenet.pipeline.prune_train."""

from sparsenet.pipeline.prune_train import prune_train
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(prune_train)
