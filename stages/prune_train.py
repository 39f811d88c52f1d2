"""DVC stage `prune_train`: see sparsenet.pipeline.prune_train."""

from sparsenet.pipeline import run_stage

if __name__ == "__main__":
    run_stage("prune_train")
