"""DVC stage `evaluate`: see sparsenet.pipeline.evaluate."""

from sparsenet.pipeline import run_stage

if __name__ == "__main__":
    run_stage("evaluate")
