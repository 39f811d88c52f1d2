"""DVC stage `evaluate` (python -m stages.evaluate): see sparsenet.pipeline.evaluate."""

from sparsenet.pipeline.evaluate import evaluate
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(evaluate)
