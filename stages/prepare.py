"""DVC stage `prepare` (python -m stages.prepare): see sparsenet.pipeline.prepare."""

from sparsenet.pipeline.prepare import prepare
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(prepare)
