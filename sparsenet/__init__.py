"""SparseNet: how much of a small CNN can be removed, by which pruning method, at what accuracy,
size and speed, as a reproducible DVC pipeline.

The pipeline's steps are the scripts in ``stages/`` (one per ``dvc.yaml`` stage); this package
holds the concepts they use, one per module: ``options`` and ``config`` (params); ``sources``,
``decode``, ``prepared`` and ``memory`` (images → memory-mapped arrays); ``data`` (arrays →
batches); ``models`` (LeNet and SparseNet, plain PyTorch); ``importance`` (magnitude, random,
L2, Taylor scores) and ``pruning`` (scores → masks); ``training`` (one loop for every training
stage), ``training_forward`` (its deterministic forward, with the compiled conv blocks of
``conv_block``) and ``resume``; ``checkpoints``, ``packed`` and ``compressed`` (file formats);
``compact`` and ``compress``; ``engine`` (generated C inference, built by ``cbuild``);
``speed`` and ``machine`` (timings and where they were taken); ``analysis``, ``plots`` and
``report``; ``io`` (atomic writes).  ``stage`` and ``training_stage`` hold what the step scripts
share.  Entry points beside the steps: ``cli``, ``export``, ``summary``, ``readme``,
``frontier`` and ``sweep``, ``sensitivity_tool``, ``bench``, ``bench_data``, ``bench_sweep``.
"""

__version__ = "0.1.0"
