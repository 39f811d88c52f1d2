"""The stages' memory setting (`run_stage` applies it): freed activation buffers are reused, not re-faulted."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
import torch.nn.functional as F
from sparsenet.models import SparseNet
from sparsenet.stage import keep_freed_memory

torch.manual_seed(0)
model = SparseNet(10, 64)
optimizer = torch.optim.Adam(model.parameters())
images = torch.randn(128, 3, 64, 64).contiguous(memory_format=torch.channels_last)  # as the loader gives
labels = torch.randint(0, 10, (128,))

def faults_per_step():
    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

if sys.argv[1] == "kept":
    keep_freed_memory()
print(faults_per_step())
"""


def test_training_steps_reuse_freed_buffers_without_page_faults(tmp_path):
    # Fresh interpreters: the setting is process-wide.  ``model(x)`` is plain PyTorch: its
    # convolution backward's full-size buffers show the faults best.
    env = dict(os.environ)

    def faults(setting: str) -> float:
        result = subprocess.run([sys.executable, "-c", SCRIPT, setting], capture_output=True, text=True,
                                check=True, env=env)
        return float(result.stdout)

    default, kept = faults("default"), faults("kept")
    if default < 100:  # e.g. huge pages everywhere: too few faults to tell the settings apart
        pytest.skip(f"{default:.0f} page faults per training step with glibc's defaults")
    assert kept < default / 4  # measured here: 150-5,600 faults per step by default, 0-70 kept
