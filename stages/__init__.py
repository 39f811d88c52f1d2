"""The pipeline's steps, one script per ``dvc.yaml`` stage, run as ``python -m stages.<step>`` from the project root.

Each script holds its step: a function ``<step>(cfg, paths)`` that reads its inputs from the
project's standard paths (:class:`sparsenet.stage.Paths`), calls the package's concepts and writes
its outputs atomically; run as a module it calls :func:`sparsenet.stage.run_stage` on it.  A step
imports only what it uses, so ``dvc.yaml`` lists exactly the files each stage depends on.

Run as modules, not as scripts: ``-m`` puts the working directory first on the import path, so a
stage always runs the ``sparsenet`` package of the checkout it runs in (a ``dvc exp run --queue``
copy, a clone), never the one an editable install points at.
"""
