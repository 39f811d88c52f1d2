"""sparsenet.engine: compiled inference equals the PyTorch model for every kind of model the
project writes, at several sizes, batch sizes, memory formats and both vector extensions; the
compile cache is reused, builds a key once however many builders ask at once, refuses folders
and libraries another user could have written and keeps to its size; without a compiler it
falls back."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sparsenet import cbuild, conv_block, engine
from sparsenet.compact import compact
from sparsenet.engine import codegen
from sparsenet.models import LAYER_NAMES, LeNet, SparseNet
from sparsenet.pruning import prune_model

HAS_ENGINE = cbuild.cpu_flags() >= cbuild.ISA_FLAGS["avx2"][0] and shutil.which("gcc") is not None
needs_engine = pytest.mark.skipif(not HAS_ENGINE, reason="needs an x86-64 CPU with AVX2 and gcc")
ISAS = [isa for isa in ("avx512", "avx2") if cbuild.cpu_flags() >= cbuild.ISA_FLAGS[isa][0]]


def trained_like(size: int, seed: int = 0) -> LeNet:
    """A LeNet whose weights have a trained model's spread (default init, scaled up)."""
    torch.manual_seed(seed)
    model = LeNet(10, size)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def model_of(kind: str, size: int) -> LeNet:
    dense = trained_like(size)
    if kind == "dense":
        return dense
    method, amount, extra = {
        "magnitude-0.5": ("magnitude", 0.5, {"scope": "layer"}),
        "magnitude-0.95": ("magnitude", 0.95, {"scope": "global"}),
        "random-0.8": ("random", 0.8, {}),
        "filters-0.5": ("structured", 0.5, {"structure": "filters"}),
        "channels-0.5": ("structured", 0.5, {"structure": "channels"}),
        "compact-filters-0.5": ("structured", 0.5, {"structure": "filters"}),
    }[kind]
    net = SparseNet.from_dense(dense)
    prune_model(net, method, amount, **extra)
    # an optimizer that ignored the masks: the engine must use the masked weights, as forward does
    with torch.no_grad():
        net.conv2.weight.add_(0.01)
    return compact(net) if kind.startswith("compact") else net


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(model: LeNet, forward, x: torch.Tensor) -> None:
    with torch.inference_mode():
        expected, got = model(x), forward(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.9995


@needs_engine
@pytest.mark.parametrize("kind,size", [
    ("dense", 64), ("magnitude-0.5", 32), ("magnitude-0.95", 64), ("random-0.8", 96),
    ("filters-0.5", 32), ("channels-0.5", 64), ("compact-filters-0.5", 96),
])
def test_engine_computes_what_the_model_computes(kind, size):
    model = model_of(kind, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward = engine.compile(model)
    assert forward.engine == ISAS[0] and forward.reason is None
    x = images(300, size)
    assert_same_logits(model, forward, x)  # 300: whole blocks and a partial one on each thread
    assert_same_logits(model, forward, x.contiguous(memory_format=torch.channels_last))
    assert_same_logits(model, forward, x[:1])  # fewer images than threads: filters split
    assert_same_logits(model, forward, x[:3])
    assert_same_logits(model, forward, x[::2, :, :, :])  # a strided view
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "compile changed the model"


@needs_engine
@pytest.mark.skipif("avx2" not in ISAS, reason="CPU without AVX2")
@pytest.mark.parametrize("kind,size", [("magnitude-0.95", 64), ("compact-filters-0.5", 32)])
def test_avx2_path_computes_what_the_model_computes(kind, size):
    model = model_of(kind, size)
    forward = engine.compile(model, isa="avx2")
    assert forward.engine == "avx2"
    x = images(40, size)
    assert_same_logits(model, forward, x)
    assert_same_logits(model, forward, x[:1])


def fma_count(model: LeNet) -> int:
    layers = engine.effective_weights(model)
    source = codegen.generate([w for w, _ in layers[:2]], [b for _, b in layers[:2]], model.image_size,
                              [w.shape for w, _ in layers[2:]], "avx512")
    return source.count("FMA(w")


def test_engine_skips_pruned_weights_in_the_generated_code():
    """Zero conv weights leave no multiply-add in the generated source."""
    dense = trained_like(32)
    sparse = SparseNet.from_dense(dense)
    prune_model(sparse, "magnitude", 0.9, scope="layer")
    assert fma_count(sparse) < 0.2 * fma_count(dense)


@needs_engine
def test_non_finite_images_get_nan_logits_and_the_others_are_untouched():
    model = model_of("magnitude-0.5", 32)
    forward = engine.compile(model)
    x = images(20, 32)
    x[3, 1, 5, 7] = float("nan")
    x[11, 0, 0, 0] = float("inf")
    assert torch.isnan(forward(x)).all(1).tolist() == [i in (3, 11) for i in range(20)]
    assert torch.isnan(forward(x[3:4])).all()  # one image: the threads share it
    with torch.inference_mode():
        good = [i for i in range(20) if i not in (3, 11)]
        assert (forward(x)[good] - model(x)[good]).abs().max() < 1e-4


@needs_engine
def test_large_inputs_stay_within_the_tolerance():
    """fc1 sums 100,000 inputs at 256 px: still within 1e-4 of PyTorch."""
    model = model_of("magnitude-0.5", 256)
    assert_same_logits(model, engine.compile(model), images(4, 256))


def call_milliseconds(forward, x: torch.Tensor) -> float:
    start = time.perf_counter()
    forward(x)
    return (time.perf_counter() - start) * 1e3


@needs_engine
def test_engine_times_each_stage():
    """One time per layer (and the input copy), which together make up the calls they were measured
    in, and in a dense model the convolutions take longer than the two small last layers."""
    forward = engine.compile(trained_like(64))
    repeats = 5
    for batch in (images(256, 64), images(1, 64)):  # whole blocks per thread; one image shared
        start = time.perf_counter()
        stages = forward.layer_milliseconds(batch, repeats=repeats)
        elapsed = (time.perf_counter() - start) * 1e3  # an untimed call, then `repeats` timed ones
        fastest = min(call_milliseconds(forward, batch) for _ in range(5))
        assert list(stages) == ["input", *LAYER_NAMES]
        assert all(ms > 0 for ms in stages.values()), stages
        total = sum(stages.values())  # the stages' clocks run inside the calls, so at most their time
        assert total * repeats < elapsed and total > 0.5 * fastest, (stages, elapsed, fastest)
        if len(batch) > 1:
            assert min(stages["conv1"], stages["conv2"]) > max(stages["fc2"], stages["fc3"]), stages


def c_prototype(source: str, function: str) -> list:
    """The ctypes type of each parameter of the C ``function`` defined in ``source``."""
    parameters = re.search(rf"\b{function}\(([^)]*)\)\s*\{{", source)[1].split(",")
    scalars = {"int": ctypes.c_int, "long": ctypes.c_long, "int64_t": ctypes.c_int64}
    return [ctypes.c_void_p if "*" in p else scalars[p.split()[-2]] for p in parameters]


@needs_engine
def test_the_engine_declares_its_c_functions_parameters():
    function = engine.compile(trained_like(32))._library.sparsenet_forward
    assert list(function.argtypes or []) == c_prototype(codegen.RUNTIME_C, "sparsenet_forward")
    assert function.restype is ctypes.c_int


@needs_engine
@pytest.mark.parametrize("layer,value", [("conv2", float("nan")), ("fc1", float("inf")), ("conv1", -float("inf"))])
def test_a_non_finite_weight_falls_back_in_one_line_naming_the_layer(layer, value, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENET_CACHE", str(tmp_path))
    model = trained_like(32)
    with torch.no_grad():
        getattr(model, layer).weight.view(-1)[7] = value
    forward = engine.compile(model)
    assert forward.engine == "pytorch"
    assert forward.reason.startswith(f"{layer}.weight holds a NaN or an infinity") and "\n" not in forward.reason
    assert not list(tmp_path.glob("engine/*.so")), "nothing is compiled"

def test_engine_rejects_wrong_input_in_one_line():
    model = trained_like(32)
    forward = engine.compile(model)
    if forward.engine == "pytorch":
        pytest.skip(forward.reason)
    with pytest.raises(ValueError, match=r"expected a batch N x 3 x 32 x 32, got \(2, 3, 64, 64\)"):
        forward(images(2, 64))
    with pytest.raises(ValueError, match="expected float32 images on cpu, got torch.float64"):
        forward(images(2, 32).double())
    with pytest.raises(cbuild.BuildError, match="SPARSENET_ISA / isa = 'sse9': expected one of avx512, avx2"):
        cbuild.choose_isa("sse9")


def test_the_fallback_checks_input_the_same_way(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSENET_CC", "no-such-cc")
    cbuild.compiler.cache_clear()
    try:
        forward = engine.compile(trained_like(32))
    finally:
        cbuild.compiler.cache_clear()
    assert forward.engine == "pytorch"
    with pytest.raises(ValueError, match=r"expected a batch N x 3 x 32 x 32, got \(2, 3, 64, 64\)"):
        forward(images(2, 64))


@needs_engine
def test_an_unwritable_cache_falls_back_with_one_line(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSENET_CACHE", str(blocker))
    forward = engine.compile(trained_like(32))
    assert forward.engine == "pytorch" and "cannot write the engine cache" in forward.reason
    assert "SPARSENET_CACHE" in forward.reason and "\n" not in forward.reason


RUN = textwrap.dedent("""
    import sys, torch
    from sparsenet import engine
    from sparsenet.models import LeNet
    torch.manual_seed(0)
    model = LeNet(10, 32)
    forward = engine.compile(model)
    engine.compile(LeNet(10, 32))  # a second model: the notice is not repeated
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        torch.save({"engine": forward.engine, "logits": forward(x), "expected": model(x)}, sys.argv[1])
""")


def run_script(tmp_path: Path, name: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / f"{name}.pt")], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_without_a_compiler_it_says_so_once_and_runs_pytorch(tmp_path):
    process = run_script(tmp_path, "fallback", {"SPARSENET_CC": "no-such-cc", "SPARSENET_CACHE": str(tmp_path)})
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert err.splitlines() == ["sparsenet.engine: SPARSENET_CC = 'no-such-cc': no such compiler on PATH; "
                                "using the PyTorch forward"]
    result = torch.load(tmp_path / "fallback.pt", weights_only=True)
    assert result["engine"] == "pytorch" and torch.equal(result["logits"], result["expected"])
    assert not list(tmp_path.glob("engine/*.so"))


# A compiler that waits: each build logs itself, then waits for the test's go-ahead.
SLOW_CC = """#!/bin/sh
case " $* " in *" --version "*) exec {gcc} "$@";; esac
echo "$$" >> {log}
while [ ! -e {release} ]; do sleep 0.05; done
exec {gcc} "$@"
"""

BUILD_ONE = textwrap.dedent("""
    import sys, torch
    from sparsenet import engine
    from sparsenet.models import LeNet
    torch.manual_seed(0)
    model = LeNet(10, 32)
    x = torch.randn(8, 3, 32, 32)
    print("compiling", flush=True)
    forward = engine.compile(model)
    with torch.inference_mode():
        torch.save({"engine": forward.engine, "logits": forward(x), "expected": model(x)}, sys.argv[1])
""")


@needs_engine
def test_concurrent_builders_of_one_model_compile_it_once(tmp_path):
    """Two queue workers compiling the same model into an empty cache: the second asks for it
    while the first is still compiling, waits, and loads the first one's library."""
    log, release, cc = tmp_path / "builds.log", tmp_path / "release", tmp_path / "slow-cc"
    cc.write_text(SLOW_CC.format(gcc=shutil.which("gcc"), log=log, release=release))
    cc.chmod(0o755)
    env = {**os.environ, "SPARSENET_CACHE": str(tmp_path / "cache"), "SPARSENET_CC": str(cc)}

    def worker(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", BUILD_ONE, str(tmp_path / f"{name}.pt")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = worker("first")
    deadline = time.monotonic() + 120
    while not log.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.exists(), "the first worker never started its build"
    second = worker("second")
    assert second.stdout.readline() == "compiling\n"
    time.sleep(5)  # the second finds no library yet: without a lock it starts a build of its own now
    release.touch()
    for process in (first, second):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert len(log.read_text().split()) == 1, "the second worker compiled the same library again"
    results = [torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in ("first", "second")]
    for result in results:
        assert result["engine"] != "pytorch"
        assert (result["logits"] - result["expected"]).abs().max() < 1e-4
    assert torch.equal(results[0]["logits"], results[1]["logits"])
    cache = tmp_path / "cache" / "engine"
    assert len(list(cache.glob("*.so"))) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "temporary files left behind"


def build_in(cache: Path, model: LeNet, monkeypatch) -> Path:
    """The library the engine compiles for ``model``, built in the cache ``cache`` (now $SPARSENET_CACHE)."""
    monkeypatch.setenv("SPARSENET_CACHE", str(cache))
    before = set(cache.glob("engine/*.so"))
    assert engine.compile(model).engine != "pytorch"
    (library,) = set(cache.glob("engine/*.so")) - before
    return library


@needs_engine
def test_a_new_cache_folder_and_its_libraries_are_private(tmp_path, monkeypatch):
    library = build_in(tmp_path / "cache", trained_like(32), monkeypatch)
    assert stat.S_IMODE(library.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(library.stat().st_mode) == 0o700


def planted(tmp_path: Path, monkeypatch) -> tuple[LeNet, Path]:
    """A model, and $SPARSENET_CACHE's engine folder holding, under that model's library name,
    another model's library (what another user would plant there)."""
    model = trained_like(32)
    name = build_in(tmp_path / "scratch", model, monkeypatch).name
    other = build_in(tmp_path / "other", trained_like(32, seed=1), monkeypatch)
    folder = tmp_path / "cache" / "engine"
    folder.mkdir(parents=True)
    shutil.copy(other, folder / name)
    monkeypatch.setenv("SPARSENET_CACHE", str(tmp_path / "cache"))
    return model, folder / name


def assert_refused(model: LeNet, path: Path, problem: str) -> None:
    forward = engine.compile(model)
    assert forward.engine == "pytorch", "a library another user could have written was loaded"
    assert forward.reason.startswith(f"{path}: {problem}") and "not loaded" in forward.reason
    assert "\n" not in forward.reason
    x = images(4, 32)
    with torch.inference_mode():
        assert torch.equal(forward(x), model(x))


@needs_engine
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=lambda mode: f"{mode:o}")
def test_a_cache_folder_others_can_write_is_refused(mode, tmp_path, monkeypatch):
    model, library = planted(tmp_path, monkeypatch)
    library.parent.chmod(mode)
    assert_refused(model, library.parent, f"writable by group or others (mode {mode:o}")


@needs_engine
def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    model, library = planted(tmp_path, monkeypatch)
    folder = library.parent
    folder.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
        owner = 65534
    else:  # a folder of root's in its place
        shutil.rmtree(folder)
        folder.symlink_to("/usr/lib")
        folder, owner = Path("/usr/lib"), 0
    assert_refused(model, folder, f"owned by uid {owner}, not by you (uid {os.geteuid()})")


@needs_engine
def test_a_library_others_can_write_or_own_is_refused(tmp_path, monkeypatch):
    model = trained_like(32)
    library = build_in(tmp_path / "cache", model, monkeypatch)
    library.chmod(0o775)
    assert_refused(model, library, "writable by group or others (mode 775")
    if os.geteuid() == 0:
        library.chmod(0o700)
        os.chown(library, 65534, 65534)
        assert_refused(model, library, "owned by uid 65534, not by you (uid 0)")


@needs_engine
def test_least_recently_used_entries_go_when_the_cache_outgrows_its_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENET_CACHE", str(tmp_path))
    folder, isa = tmp_path / "engine", cbuild.choose_isa()
    first, second, third = (conv_block.source(1, filters, 1, 2, 2) for filters in (1, 2, 3))

    def libraries() -> set[str]:
        return {p.stem for p in folder.glob("*.so")}

    cbuild.load(first, isa)
    (a,) = libraries()
    cbuild.load(second, isa)
    (b,) = libraries() - {a}
    two = sum(p.stat().st_size for p in folder.iterdir())
    monkeypatch.setenv("SPARSENET_CACHE_MB", str(1.4 * two / 2**20))  # room for two entries, not three
    cbuild.load(first, isa)  # used again: the second is now the least recently used
    cbuild.load(third, isa)
    (c,) = libraries() - {a, b}
    assert libraries() == {a, c}
    assert {p.name.split(".")[0] for p in folder.iterdir()} == {a, c}, "the second's source and lock went too"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 1.4 * two


def test_a_bad_cache_cap_is_one_line(monkeypatch):
    monkeypatch.setenv("SPARSENET_CACHE_MB", "lots")
    with pytest.raises(cbuild.BuildError, match=r"^SPARSENET_CACHE_MB = 'lots': expected a number of MiB >= 0$"):
        cbuild.load(conv_block.source(1, 1, 1, 2, 2), "avx2")


@needs_engine
def test_cache_is_reused_and_keyed_by_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENET_CACHE", str(tmp_path))
    model = trained_like(32)
    engine.compile(model)
    libraries = list((tmp_path / "engine").glob("*.so"))
    assert len(libraries) == 1
    stamp = libraries[0].stat()
    engine.compile(trained_like(32))  # same weights: no new build, the file is not rewritten
    assert list((tmp_path / "engine").glob("*.so")) == libraries
    assert libraries[0].stat().st_mtime_ns == stamp.st_mtime_ns and libraries[0].stat().st_ino == stamp.st_ino
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] += 1e-3  # one weight differs: another library
    engine.compile(model)
    assert len(list((tmp_path / "engine").glob("*.so"))) == 2


@needs_engine
def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    env = {"SPARSENET_CACHE": str(tmp_path / "cache")}
    first = run_script(tmp_path, "first", env)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    library = next((tmp_path / "cache" / "engine").glob("*.so"))
    damaged = library.with_name("damaged")
    damaged.write_bytes(b"not a library")
    damaged.replace(library)
    second = run_script(tmp_path, "second", env)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "cannot be loaded" in err and "building it again" in err
    result = torch.load(tmp_path / "second.pt", weights_only=True)
    assert result["engine"] != "pytorch" and (result["logits"] - result["expected"]).abs().max() < 1e-4
    assert library.stat().st_size > 1000
