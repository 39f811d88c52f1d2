"""The pipeline's steps, one module each; ``stages/<step>.py`` runs ``<step>`` with :func:`stage.run_stage`.

Each step reads its inputs from the project's standard paths (:class:`stage.Paths`), does one
thing and writes its outputs atomically.  A step module imports only what that step uses, so
``dvc.yaml`` can list exactly the files each stage depends on.
"""
