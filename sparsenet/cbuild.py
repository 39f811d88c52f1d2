"""Compile C source into a shared library, once: a per-user cache keyed by what went into it.

Used by the inference engine (:mod:`sparsenet.engine`, whose generated source holds every weight)
and by the training kernels (:mod:`sparsenet.conv_block`).  The key hashes the source, the
vector extension, the compiler and its flags, and the CPU's feature flags; an entry is
``<key>.so`` (the library), ``<key>.c`` (its source, for anyone who asks) and ``<key>.lock``.

Only the user's own code is loaded.  The cache folder is created mode 0700; a folder or library
owned by another user, or writable by group or others, is refused in one line (the caller then
runs PyTorch), as anyone who can write there could plant a library under a predictable name.  The
library is opened through the folder as checked, whatever its path names meanwhile, and compiled
from the source on the compiler's standard input, not from a file someone could swap.

Builds of one key take turns (a lock on ``<key>.lock``): of two ``dvc queue`` workers compiling
the same model at once, the second waits and loads the first one's library.  A library is
compiled into a temporary file and renamed into place (:func:`sparsenet.io.atomic_path`), so a
reader never sees a torn one.  After each build, while the folder holds more than
$SPARSENET_CACHE_MB, the least recently used entries are deleted (use = the library's access
time, set on every load); an entry another process is building or loading is left alone.  An
engine entry takes ~1 MB at 32 px, ~1.5 MB at 256 px; a training kernel's ~25 KB.

    SPARSENET_CACHE     the cache folder's parent (default $XDG_CACHE_HOME/sparsenet, else
                        ~/.cache/sparsenet); the cache folder is its subfolder ``engine``
    SPARSENET_CACHE_MB  the most the cache folder keeps, in MiB (default 512)
    SPARSENET_CC        the C compiler (default $CC, else gcc, else cc)
    SPARSENET_ISA       avx512 | avx2: the vector extension to compile for (default, or when the CPU
                        lacks the one asked for: the best the CPU has)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
from contextlib import suppress
from functools import lru_cache
from pathlib import Path

from filelock import FileLock, Timeout

from sparsenet.errors import SparseNetError
from sparsenet.io import atomic_path, make_dirs, write_text

# CPU flags each vector extension needs (Linux /proc/cpuinfo names), and exactly the compiler
# options that enable them (no -march: it would also allow instructions the check never saw).
ISA_FLAGS = {
    "avx512": ({"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"},
               ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma")),
    "avx2": ({"avx2", "fma"}, ("-mavx2", "-mfma")),
}
COMPILE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-mprefer-vector-width=512")
CACHE_MB = 512  # default of $SPARSENET_CACHE_MB
COMPILE_SECONDS = 600  # longest a build may take; a builder of the same key waits a little longer
ENTRY = re.compile(r"\.?([0-9a-f]{32})\.")  # a cache file's key: <key>.so/.c/.lock, .<key>.so.*.tmp.so


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


def cache_limit() -> int:
    """The most bytes the cache folder keeps: $SPARSENET_CACHE_MB MiB (default :data:`CACHE_MB`)."""
    value = os.environ.get("SPARSENET_CACHE_MB") or str(CACHE_MB)
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:  # also refuses nan
        raise BuildError(f"SPARSENET_CACHE_MB = {value!r}: expected a number of MiB >= 0")
    return int(megabytes * 2**20)


def _refuse_unless_private(path: Path, status: os.stat_result) -> None:
    """A BuildError unless ``path`` (``status``: its stat) is the user's own and only theirs to write."""
    if status.st_uid != os.geteuid():
        problem = f"owned by uid {status.st_uid}, not by you (uid {os.geteuid()})"
        remedy = "set SPARSENET_CACHE to a folder of your own"
    elif status.st_mode & 0o022:
        problem = f"writable by group or others (mode {stat.S_IMODE(status.st_mode):o}, expected 700)"
        remedy = "delete it: the cache is rebuilt"
    else:
        return
    raise BuildError(f"{path}: {problem}; another user could have written the code in it, so it is not loaded "
                     f"({remedy})")


def _key(source: str, isa: str) -> tuple[str, list[str]]:
    """The cache key of ``source`` built for ``isa``, and the compiler's command without its output."""
    path, version = compiler()
    flags = [*COMPILE_FLAGS, *ISA_FLAGS[isa][1]]
    key = hashlib.sha256("\0".join([isa, path, version, " ".join(flags),
                                    " ".join(sorted(cpu_flags())), source]).encode()).hexdigest()[:32]
    return key, [path, *flags, "-x", "c", "-"]


def _build(command: list[str], source: str, folder: Path, here: str, key: str) -> None:
    """Compile ``source`` (fed on standard input: no file of it to swap) into ``<key>.so`` in the
    checked ``folder`` (``here``: its /proc/self/fd path), made private."""
    compiler_path = command[0]
    with atomic_path(f"{here}/{key}.so") as tmp:
        try:  # the compiler's linker runs in another process: it is given the folder's path
            result = subprocess.run([*command, "-o", str(folder / tmp.name)], input=source, capture_output=True,
                                    text=True, timeout=COMPILE_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"{compiler_path} failed to run: {exc}") from None
        if result.returncode == 0 and (not tmp.is_file() or tmp.stat().st_size == 0):
            raise BuildError(f"{compiler_path} wrote an empty library (is it a C compiler?)")
        if result.returncode != 0:
            lines = result.stderr.splitlines()
            first = next((line for line in lines if "error" in line), lines[0] if lines else "")
            raise BuildError(f"{compiler_path} could not compile {folder / key}.c: "
                             f"{first[:200] or f'exit code {result.returncode}'}")
        os.chmod(tmp, 0o700)  # whatever the umask: a group-writable library would be refused


def _open(shown: Path, path: str) -> ctypes.CDLL:
    """The library at ``path`` (``shown``: its name in messages) if it is private, loaded and
    marked used now."""
    status = os.stat(path)
    _refuse_unless_private(shown, status)
    os.utime(path, ns=(time.time_ns(), status.st_mtime_ns))  # its access time says when it was last used
    return ctypes.CDLL(path)


def _evict(here: str, keep: str, limit: int) -> None:
    """Delete the least recently used entries until the folder ``here`` holds at most ``limit``
    bytes; ``keep`` (just built) stays, and so does an entry whose lock another process holds."""
    entries: dict[str, dict[str, os.stat_result]] = {}
    for name in os.listdir(here):
        match = ENTRY.match(name)
        try:
            if match:
                entries.setdefault(match[1], {})[name] = os.lstat(f"{here}/{name}")
        except FileNotFoundError:  # a temporary file renamed meanwhile
            pass
    total = sum(status.st_size for files in entries.values() for status in files.values())

    def last_used(key: str) -> int:
        files = entries[key]
        library = files.get(f"{key}.so")
        return library.st_atime_ns if library else max(status.st_mtime_ns for status in files.values())

    for key in sorted(entries.keys() - {keep}, key=last_used):
        if total <= limit:
            return
        try:
            with FileLock(f"{here}/{key}.lock", timeout=0):
                # the lock file goes too: a process waiting on it notices and takes a new one
                for name in {*entries[key], f"{key}.lock"}:
                    with suppress(FileNotFoundError):
                        os.unlink(f"{here}/{name}")
        except Timeout:
            continue  # being built or loaded right now
        total -= sum(status.st_size for status in entries[key].values())


def load(source: str, isa: str) -> ctypes.CDLL:
    """The library compiled from ``source`` for ``isa``, loaded: from the cache, else built now (one
    build of a key at a time); a cached file that does not load (damaged) is built again."""
    limit = cache_limit()
    key, command = _key(source, isa)
    folder = cache_dir()
    unwritable = "cannot write the engine cache ({}); set SPARSENET_CACHE to a writable folder"
    try:
        make_dirs(folder.parent)
        with suppress(FileExistsError):
            folder.mkdir(mode=0o700)  # the umask may take bits away, never add any
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, SparseNetError) as exc:
        raise BuildError(f"{folder}: {unwritable.format(exc)}") from None
    here = f"/proc/self/fd/{descriptor}"  # this very folder, even if its path names another one later
    library_file = folder / f"{key}.so"
    try:
        _refuse_unless_private(folder, os.fstat(descriptor))
        built = False
        with FileLock(f"{here}/{key}.lock", timeout=COMPILE_SECONDS + 60):
            for attempt in range(2):
                if attempt or not os.path.exists(f"{here}/{key}.so"):
                    write_text(f"{here}/{key}.c", source)
                    _build(command, source, folder, here, key)
                    built = True
                try:
                    library = _open(library_file, f"{here}/{key}.so")
                    break
                except OSError as exc:
                    why = str(exc).replace(here, str(folder))
                    if built:
                        raise BuildError(f"{library_file}: cannot be loaded ({why[:200]})") from None
                    print(f"sparsenet: {library_file}: cannot be loaded ({why[:120]}); building it again",
                          file=sys.stderr)
        if built:
            _evict(here, key, limit)
    except Timeout:
        raise BuildError(f"{folder}: another process has been building {key}.so for over "
                         f"{COMPILE_SECONDS + 60} s") from None
    except (OSError, SparseNetError) as exc:
        raise BuildError(f"{folder}: {unwritable.format(exc)}") from None
    finally:
        os.close(descriptor)
    return library
