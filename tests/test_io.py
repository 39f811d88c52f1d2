"""Atomic outputs: a failure or a SIGKILL at any moment leaves the old file or the new one."""

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from sparsenet.errors import SparseNetError
from sparsenet.checkpoints import load_checkpoint
from sparsenet.io import atomic_path, read_json, write_json, write_text

WRITER = """
import sys
from sparsenet.io import write_bytes
path, size = sys.argv[1], int(sys.argv[2])
blocks = [bytes([65]) * size, bytes([66]) * size]
print("ready", flush=True)
i = 0
while True:  # rewrite the file forever, alternating two contents
    write_bytes(path, blocks[i % 2])
    i += 1
"""


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"accura')  # half-written, then the step fails
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "model.pt"
    size = 8 * 1024 * 1024
    whole = {hashlib.sha256(bytes([c]) * size).hexdigest() for c in (65, 66)}
    for delay in (0.05, 0.13, 0.31):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL
        assert hashlib.sha256(target.read_bytes()).hexdigest() in whole


def test_torn_or_foreign_checkpoint_is_one_clear_error(tmp_path):
    torn = tmp_path / "sparse.pt"
    torn.write_bytes(b"PK\x03\x04" + b"\x00" * 50)  # a zip header cut short
    with pytest.raises(SparseNetError, match="sparse.pt: not a .*SparseNet checkpoint") as err:
        load_checkpoint(torn)
    assert "\n" not in str(err.value)


def test_atomic_dir_swaps_in_whole_or_keeps_the_old_folder(tmp_path):
    from sparsenet.io import atomic_dir

    logs = tmp_path / "logs" / "train_dense"
    with atomic_dir(logs) as partial:
        (partial / "metrics.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(logs) as partial:
            (partial / "metrics.json").write_text("half")
            raise RuntimeError("killed")
    assert (logs / "metrics.json").read_text() == "old"
    with atomic_dir(logs) as partial:
        (partial / "metrics.json").write_text("new")
        assert (logs / "metrics.json").read_text() == "old", "the old logs stay until the new ones are complete"
    assert (logs / "metrics.json").read_text() == "new"
    assert sorted(p.name for p in logs.parent.iterdir()) == ["train_dense"]


def test_atomic_writes_get_a_new_files_mode_not_a_private_one(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "out.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644


def test_atomic_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    def forbidden(_mask):  # another thread creating files meanwhile would get a wrong mode
        raise AssertionError("os.umask was called")

    umask = os.umask(0o027)
    os.umask(umask)  # read it (before the guard is in place), then restore it
    monkeypatch.setattr(os, "umask", forbidden)
    write_text(tmp_path / "out.json", "{}")
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~umask


def _recording(monkeypatch, events):
    """Record fsync (of which path) and rename calls while passing them through."""
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)


def test_atomic_write_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    _recording(monkeypatch, events)
    write_text(tmp_path / "metrics.json", "{}")
    (rename,) = [e for e in events if e[0] == "replace"]
    assert rename[2] == str(tmp_path / "metrics.json")
    position = events.index(rename)
    assert ("fsync", rename[1]) in events[:position], "the new file's data is on disk before it replaces the old"
    assert ("fsync", str(tmp_path)) in events[position:], "the rename itself is on disk"


def test_atomic_dir_flushes_every_new_file_before_the_swap(tmp_path, monkeypatch):
    from sparsenet.io import atomic_dir

    events = []
    _recording(monkeypatch, events)
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with atomic_dir(target) as partial:
        (partial / "a.npy").write_text("a")
        (partial / "sub").mkdir()
        (partial / "sub" / "b.json").write_text("b")
    flushed = {e[1] for e in events if e[0] == "fsync"}
    assert {str(partial / "a.npy"), str(partial / "sub" / "b.json"), str(partial / "sub"), str(partial),
            str(tmp_path)} <= flushed
    assert sorted(p.name for p in target.iterdir()) == ["a.npy", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_new_folders_are_flushed_into_their_parents(tmp_path, monkeypatch):
    events = []
    _recording(monkeypatch, events)
    write_text(tmp_path / "metrics" / "deep" / "out.json", "{}")
    flushed = [e[1] for e in events if e[0] == "fsync"]
    assert flushed.index(str(tmp_path)) < flushed.index(str(tmp_path / "metrics")), "metrics/ is recorded in tmp/"
    assert str(tmp_path / "metrics" / "deep") in flushed


def test_two_writers_of_one_folder_do_not_clobber_each_other(tmp_path):
    from sparsenet.io import atomic_dir

    target = tmp_path / "prepared"
    with atomic_dir(target) as first:
        (first / "who").write_text("first")
        with atomic_dir(target) as second:  # a second writer starts while the first is writing
            assert not list(second.iterdir())
            (second / "who").write_text("second")
        assert (target / "who").read_text() == "second"
        assert (first / "who").read_text() == "first", "the second writer took the first one's folder"
    assert (target / "who").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


HOLDER = """
import sys, time
from sparsenet.io import atomic_dir
with atomic_dir(sys.argv[1]) as side:
    (side / "half").write_text("half")
    print(side, flush=True)
    time.sleep(600)
"""


def test_a_killed_writers_side_folder_is_removed_by_the_next_writer_a_living_ones_kept(tmp_path):
    from sparsenet.io import atomic_dir

    target = tmp_path / "prepared"
    writer = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        side = writer.stdout.readline().strip()
        assert (tmp_path / side).is_dir()
        with atomic_dir(target) as partial:
            (partial / "a").write_text("a")
        assert os.path.isdir(side), "a writer still at work lost its folder"
    finally:
        writer.kill()
        writer.wait()
    with atomic_dir(target) as partial:
        (partial / "b").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    assert [p.name for p in target.iterdir()] == ["b"]
