"""DVC stage `visualize` (python -m stages.visualize): see sparsenet.pipeline.visualize."""

from sparsenet.pipeline.visualize import visualize
from sparsenet.pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage(visualize)
