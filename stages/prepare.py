"""DVC stage `prepare` (python -m stages.prepare): see sparsenet.pipeline.prepare."""

if __name__ == "__main__":
    # Imported here, not above: the processes decoding a folder import this module again as
    # their main module, and need the decoder only, not torch.
    from sparsenet.pipeline.prepare import prepare
    from sparsenet.pipeline.stage import run_stage

    run_stage(prepare)
