"""DVC stage `compress` (python -m stages.compress): see sparsenet.pipeline.compress."""

from sparsenet.pipeline.compress import compress
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(compress)
