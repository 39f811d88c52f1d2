"""DVC stage `prepare`: see sparsenet.pipeline.prepare."""

from sparsenet.pipeline import run_stage

if __name__ == "__main__":
    run_stage("prepare")
