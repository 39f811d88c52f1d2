"""The DVC stage entry points, run as ``python -m stages.<step>`` from the project root.

Run as modules, not as scripts: ``-m`` puts the working directory first on the import path, so a
stage always runs the ``sparsenet`` package of the checkout it runs in (a ``dvc exp run --queue``
copy, a clone), never the one an editable install points at.
"""
