"""Every parameter's default, allowed values and range: the one place they are written down.

A leaf module (it imports nothing of the project), so ``config`` validates against it and every
other module (pruning, training, the frontier tool) reads the same names and defaults.
"""

from __future__ import annotations

DATA_SOURCES = ("fashion-mnist", "folder", "synthetic")
LR_SCHEDULES = ("constant", "cosine")
CONV_BLOCKS = ("compiled", "pytorch")  # how CPU training computes conv + pool + ReLU (sparsenet.training_forward)
PRUNE_METHODS = ("magnitude", "random", "taylor", "structured")
PRUNE_CRITERIA = ("l2", "taylor")  # how structured pruning ranks filters / channels
PRUNE_ALLOCATIONS = ("uniform", "sensitivity")  # how structured pruning shares the target among layers
PRUNE_STRUCTURES = ("filters", "channels")
PRUNE_SCOPES = ("layer", "global")
PRUNE_SCHEDULES = ("constant", "linear", "cubic")
LAYER_NAMES = ("conv1", "conv2", "fc1", "fc2", "fc3")  # LeNet's weight layers, input to output
REWIND_POINTS = ("none", "init", "reinit")  # or a dense epoch number 1..train.epochs
# The layer each structure never prunes: removing the classifier's filters would remove classes,
# removing conv1's input channels would remove the image's colours.
STRUCTURE_KEEPS = {"filters": "fc3", "channels": "conv1"}
# The largest share a layer's sensitivity curve is measured at: prune.allocation: sensitivity
# cannot reach a target beyond it.
SENSITIVITY_MAX_SHARE = 0.98

# Defaults of every key of params.yaml (docs/params.md).
DEFAULTS: dict = {
    "seed": 0,
    "data": {
        "source": "fashion-mnist",
        "train_dir": "data/train",
        "test_dir": "data/test",
        "image_size": 64,
        "fashion_mnist_dir": "/usr/share/datasets/fashion-mnist",
        "workers": 0,
        "synthetic": {"train_size": 600, "test_size": 200, "classes": 4},
    },
    "train": {"epochs": 4, "batch_size": 128, "lr": 0.002, "lr_schedule": "cosine", "conv_block": "compiled"},
    "prune": {
        "method": "magnitude",
        "structure": "filters",
        "scope": "global",
        "criterion": "l2",
        "score_batches": 16,
        "allocation": "uniform",
        "round_to": 1,
        "schedule": "cubic",
        "exclude": [],
        "rewind": "none",
        "sparsity": 0.95,
        "epochs": 3,
        "finetune_epochs": 1,
        "lr": 0.001,
        "lr_schedule": "constant",
    },
    "compress": {"conv_bits": 8, "fc_bits": 5, "epochs": 1, "lr": 0.0001},
}

# Inclusive ranges of the numeric keys, except where the bound is marked open.  The upper bounds
# keep every run within what one machine can hold and finish; memory is checked again in prepare.
INT_RANGES: dict[str, tuple[int, int]] = {
    "seed": (0, 2**32 - 1),  # NumPy's seed range
    "data.image_size": (16, 512),  # LeNet needs 16; at 512 fc1 alone has 30M weights
    "data.workers": (0, 1024),  # processes decoding a folder; 0: one per core
    "data.synthetic.train_size": (1, 1_000_000),
    "data.synthetic.test_size": (1, 1_000_000),
    "data.synthetic.classes": (2, 1000),
    "train.epochs": (1, 1000),
    "train.batch_size": (1, 65536),
    "prune.epochs": (1, 1000),
    "prune.finetune_epochs": (0, 1000),
    "prune.score_batches": (1, 100_000),  # training batches the Taylor scores are summed over
    "prune.round_to": (1, 4096),
    "compress.conv_bits": (1, 8),  # codes are stored one byte each before Huffman coding
    "compress.fc_bits": (1, 8),
    "compress.epochs": (0, 1000),
}
OPEN_FLOAT_RANGES: dict[str, tuple[float, float]] = {  # (low, high), both excluded
    "train.lr": (0.0, 1.0),
    "prune.lr": (0.0, 1.0),
    "compress.lr": (0.0, 1.0),
}
HALF_OPEN_FLOAT_RANGES: dict[str, tuple[float, float]] = {  # [low, high)
    "prune.sparsity": (0.0, 1.0),
}


def default(key: str):
    """The default of a dotted key, e.g. ``default("prune.schedule") == "cubic"``."""
    value = DEFAULTS
    for part in key.split("."):
        value = value[part]
    return value
