"""Compile C source into a shared library, once: a per-user cache keyed by what went into it.

Used by the inference engine (:mod:`sparsenet.engine`, whose generated source holds every weight)
and by the training kernels (:mod:`sparsenet.conv_block`).  The key hashes the source, the
vector extension, the compiler and its flags, and the CPU's feature flags.  A library is compiled into
a temporary file beside its final name and renamed over it (:func:`sparsenet.io.atomic_path`),
so two processes compiling the same model at once (two ``dvc queue`` workers) each write a whole
file and the last rename wins; a reader never sees a torn one.

    SPARSENET_CACHE   the cache folder (default $XDG_CACHE_HOME/sparsenet, else ~/.cache/sparsenet)
    SPARSENET_CC      the C compiler (default $CC, else gcc, else cc)
    SPARSENET_ISA     avx512 | avx2: the vector extension to compile for (default, or when the CPU
                      lacks the one asked for: the best the CPU has)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from sparsenet.errors import SparseNetError
from sparsenet.io import atomic_path, write_text

# CPU flags each vector extension needs (Linux /proc/cpuinfo names), and exactly the compiler
# options that enable them (no -march: it would also allow instructions the check never saw).
ISA_FLAGS = {
    "avx512": ({"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"},
               ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma")),
    "avx2": ({"avx2", "fma"}, ("-mavx2", "-mfma")),
}
COMPILE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-mprefer-vector-width=512")


class BuildError(Exception):
    """The engine cannot be built here; the message says why in one line."""


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not available)."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def choose_isa(requested: str | None = None) -> str:
    """The vector extension to compile for: ``requested`` (or $SPARSENET_ISA) if the CPU has it,
    else the best one it has (AVX-512 before AVX2)."""
    requested = requested or os.environ.get("SPARSENET_ISA") or None
    if requested is not None and requested not in ISA_FLAGS:
        raise BuildError(f"SPARSENET_ISA / isa = {requested!r}: expected one of {', '.join(ISA_FLAGS)}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise BuildError(f"the engine needs an x86-64 CPU with AVX2 (this one is {platform.machine()})")
    flags = cpu_flags()
    names = list(ISA_FLAGS)
    for name in names[names.index(requested):] if requested else names:
        if ISA_FLAGS[name][0] <= flags:
            return name
    raise BuildError("this CPU lacks AVX2 and FMA" + ("" if flags else " (no /proc/cpuinfo)"))


@lru_cache(maxsize=None)
def compiler() -> tuple[str, str]:
    """(path, version line) of the C compiler: $SPARSENET_CC, $CC, gcc or cc."""
    candidates = [os.environ.get("SPARSENET_CC"), os.environ.get("CC"), "gcc", "cc"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path is None:
            if name == os.environ.get("SPARSENET_CC"):
                raise BuildError(f"SPARSENET_CC = {name!r}: no such compiler on PATH")
            continue
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"C compiler {path} does not run: {exc}") from None
        return path, (version.stdout.splitlines() or ["unknown"])[0]
    raise BuildError("no C compiler found (install gcc: apt-get install gcc, or set SPARSENET_CC)")


def cache_dir() -> Path:
    """The per-user folder compiled engines are kept in."""
    if os.environ.get("SPARSENET_CACHE"):
        return Path(os.environ["SPARSENET_CACHE"]) / "engine"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsenet" / "engine"


def library(source: str, isa: str) -> Path:
    """The shared library compiled from ``source`` for ``isa``: from the cache, else built now."""
    path, version = compiler()
    flags = [*COMPILE_FLAGS, *ISA_FLAGS[isa][1]]
    key = hashlib.sha256("\0".join([isa, path, version, " ".join(flags),
                                    " ".join(sorted(cpu_flags())), source]).encode()).hexdigest()[:32]
    target = cache_dir() / f"{key}.so"
    if target.is_file():
        return target
    c_file = cache_dir() / f"{key}.c"
    try:
        write_text(c_file, source)  # kept beside the library: what was compiled, for anyone who asks
        with atomic_path(target) as tmp:
            try:
                result = subprocess.run([path, *flags, "-o", str(tmp), str(c_file)], capture_output=True, text=True,
                                        timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BuildError(f"{path} failed to run: {exc}") from None
            if result.returncode == 0 and (not tmp.is_file() or tmp.stat().st_size == 0):
                raise BuildError(f"{path} wrote an empty library (is it a C compiler?)")
            if result.returncode != 0:
                lines = result.stderr.splitlines()
                first = next((line for line in lines if "error" in line), lines[0] if lines else "")
                raise BuildError(f"{path} could not compile the generated source in {cache_dir()}: "
                                 f"{first[:200] or f'exit code {result.returncode}'}")
    except (OSError, SparseNetError) as exc:
        raise BuildError(f"{cache_dir()}: cannot write the engine cache ({exc}); set SPARSENET_CACHE to a "
                         "writable folder") from None
    return target


def load(source: str, isa: str) -> ctypes.CDLL:
    """The library compiled from ``source`` for ``isa``, loaded; a cached file that does not load
    (damaged) is built again."""
    path = library(source, isa)
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        print(f"sparsenet: {path}: cannot be loaded ({str(exc)[:120]}); building it again", file=sys.stderr)
        path.unlink(missing_ok=True)
        path = library(source, isa)
        try:
            return ctypes.CDLL(str(path))
        except OSError as again:
            raise BuildError(f"{path}: cannot be loaded ({str(again)[:200]})") from None
