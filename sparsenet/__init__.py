"""SparseNet: how much of a small CNN can be removed, by which pruning method, at what accuracy,
size and speed, as a reproducible DVC pipeline.

The pipeline's steps are the scripts in ``stages/`` (one per ``dvc.yaml`` stage); this package
holds the concepts they use, one per module: ``options`` and ``config`` (params), ``sources``,
``decode`` and ``prepared`` (images → memory-mapped arrays), ``data`` (arrays → batches),
``models`` (LeNet and SparseNet, plain PyTorch), ``importance`` (magnitude, random, L2, Taylor
scores), ``pruning`` (scores → masks), ``training`` (one loop for every training stage) and
``training_forward`` (its deterministic forward pass, with the compiled conv blocks of
``conv_block``), ``checkpoints``, ``compact``, ``compress``, ``engine`` (generated C inference),
``analysis``, ``plots``, ``io`` (atomic writes); ``stage`` and ``training_stage`` hold what the
step scripts share.  The tools (``frontier``, ``sweep``, ``bench*``, ``sensitivity_tool``,
``summary``) and ``cli`` are entry points beside the steps.
"""

__version__ = "0.1.0"
