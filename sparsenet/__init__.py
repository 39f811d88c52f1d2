"""SparseNet: prune a LeNet by magnitude, random or structured pruning, as a reproducible DVC pipeline.

Modules, one concept each: ``config`` (params), ``sources`` (Fashion-MNIST, folders, synthetic,
as chunks), ``decode`` (one image file → uint8, bounded memory), ``prepared`` (the arrays on
disk, written chunk by chunk, read memory-mapped), ``data`` (splits → batches),
``models`` (LeNet, SparseConv2d, SparseLinear, SparseNet), ``pruning``, ``training``,
``analysis`` (sparsity), ``plots``, ``io`` (atomic writes, checkpoints) and ``pipeline`` (the
five stage functions the scripts in ``stages/`` call).
"""

__version__ = "0.1.0"
