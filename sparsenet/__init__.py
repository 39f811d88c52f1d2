"""SparseNet: prune a LeNet by magnitude, random or structured pruning, as a reproducible DVC pipeline.

Modules, one concept each: ``config`` (params), ``data`` (sources → prepared arrays → batches),
``models`` (LeNet, SparseConv2d, SparseLinear, SparseNet), ``pruning``, ``training``,
``analysis`` (sparsity), ``plots``, ``io`` (atomic writes, checkpoints) and ``pipeline`` (the
five stage functions the scripts in ``stages/`` call).
"""

__version__ = "0.1.0"
