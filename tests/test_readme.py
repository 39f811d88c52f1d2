"""README.md and docs/: rendered figures equal the committed files', links resolve, the README stays short."""

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from sparsenet import readme
from sparsenet.decode import MAX_DECODED_BYTES, working_set
from sparsenet.options import DEFAULTS

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = readme.documents(REPO)
DECIMAL = re.compile(r"(?<![\w.])[+-]?\d+\.\d+(?![\w.])")


def project_copy(tmp_path: Path) -> Path:
    """The documents and every file the renderer reads, copied to ``tmp_path``."""
    shutil.copy2(REPO / "README.md", tmp_path / "README.md")
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    for folder in ("docs", "metrics", "results/frontier"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "plots").mkdir()
    shutil.copy2(REPO / "plots/sensitivity.csv", tmp_path / "plots/sensitivity.csv")
    return tmp_path


def block(text: str, name: str) -> str:
    (match,) = [m for m in readme.BLOCK.finditer(text) if m["name"] == name]
    return match["body"]


RESULT_FILES = ("params.yaml", "metrics", "results/frontier", "plots/sensitivity.csv")


def committed_results(tmp_path: Path) -> Path:
    """The result files as the last commit holds them (``git archive HEAD``), under ``tmp_path``.

    Not the working copies: after ``bash run.sh`` the speed stage has rewritten
    ``metrics/speed.json`` with this machine's timings, and the README renders the committed run.
    Outside a git checkout (an unpacked release) the files as they are.
    """
    if not (REPO / ".git").exists():
        return REPO
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "--", *RESULT_FILES], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def test_every_rendered_block_equals_what_the_committed_files_render(tmp_path):
    blocks = {}
    sources = readme.Sources(committed_results(tmp_path))
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        rendered, changed = readme.render(text, sources, path.name)
        assert changed == [], f"{path.relative_to(REPO)}: run python -m sparsenet.readme"
        assert rendered == text
        blocks[path.relative_to(REPO).as_posix()] = [m["name"] for m in readme.BLOCK.finditer(text)]
    assert blocks["README.md"] == ["default-params", "default-run", "speed", "frontier-headline"]
    assert {"targets", "frontier-accuracy", "frontier-vs-control", "frontier-pairs"} <= set(blocks["docs/results.md"])
    assert {"bench-training", "bench-inference", "bench-data", "bench-sweep"} <= set(blocks["docs/benchmarks.md"])


def speed_figures(d: dict) -> None:
    d["images_per_second"].update(dense_eager=10_000.0, sparse_engine=50_000.0)


@pytest.mark.parametrize("source, change, document, name, row, new", [
    ("metrics/evaluate.json", lambda d: d["dense"].update(accuracy=0.8765), "README.md", "default-run",
     "| dense LeNet |", ["| 87.65% |"]),
    ("metrics/speed.json", speed_figures, "README.md", "speed", "| pruned (`models/sparse.pt`) |",
     ["| 50,000 (", "| 5.00× |"]),
    ("metrics/speed.json", lambda d: d.update(machine={"cpu": "Test CPU 9000", "cores": 2, "threads": 2, "torch": "2.99"}),
     "README.md", "speed", "Measured on", ["Measured on Test CPU 9000, 2 cores, 2 threads, torch 2.99;"]),
    ("metrics/speed.json", lambda d: d.update(machine={"processor": "Other CPU", "cores": 4, "threads": 3,
                                                        "device": "cpu", "platform": "Linux", "torch": "2.14.1"}),
     "README.md", "speed", "Measured on", ["Measured on Other CPU, 4 cores, 3 threads, torch 2.14.1;"]),
    ("metrics/bench.json", lambda d: d["training_step"].update(sparse_vs_dense=1.2345), "docs/results.md", "targets",
     "| SparseNet training step", ["| 1.23× | **not met** |"]),
])
def test_a_changed_figure_in_a_source_changes_its_table(tmp_path, source, change, document, name, row, new):
    root = project_copy(tmp_path)

    def line() -> str:
        (found,) = [text for text in block((root / document).read_text(), name).splitlines() if text.startswith(row)]
        return found

    before = line()
    data = json.loads((root / source).read_text())
    change(data)
    (root / source).write_text(json.dumps(data))
    readme.main(["--root", str(root)])
    after = line()
    assert all(part in after and part not in before for part in new), (before, after)


def test_a_changed_frontier_point_changes_the_headline_and_the_full_table(tmp_path):
    root = project_copy(tmp_path)
    frontier = pd.read_csv(root / "results/frontier/frontier.csv", dtype={"commits": str})
    point = (frontier["line"] == "magnitude (global)") & (frontier["target_sparsity"] == 0.95)
    assert point.sum() == 1
    frontier.loc[point, ["accuracy_mean", "accuracy_std"]] = [0.8888, 0.0123]
    frontier.to_csv(root / "results/frontier/frontier.csv", index=False)
    readme.main(["--root", str(root)])
    headline = block((root / "README.md").read_text(), "frontier-headline")
    (magnitude,) = [line for line in headline.splitlines() if line.startswith("| magnitude, global |")]
    assert magnitude.split(" | ")[5] == "88.88 ± 1.23"
    assert "| magnitude (global) |" in block((root / "docs/results.md").read_text(), "frontier-accuracy")
    assert "88.88 ± 1.23" in block((root / "docs/results.md").read_text(), "frontier-accuracy")


def test_check_fails_in_one_line_naming_the_file_whose_block_was_edited(tmp_path, capsys):
    root = project_copy(tmp_path)
    readme.main(["--check", "--root", str(root)])  # the committed documents pass
    text = (root / "README.md").read_text()
    edited = text.replace("| dense LeNet |", "| dense LeNet, edited |", 1)
    assert edited != text and "edited" in block(edited, "default-run")
    (root / "README.md").write_text(edited)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        readme.main(["--check", "--root", str(root)])
    assert stop.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "README.md (default-run)" in lines[0] and "docs/" not in lines[0]
    assert (root / "README.md").read_text() == edited  # --check changes nothing


def test_an_unknown_block_or_a_marker_without_its_end_stops_in_one_line(tmp_path, capsys):
    root = project_copy(tmp_path)
    for text, says in (("<!-- rendered: nope -->\n<!-- end rendered -->\n", "unknown rendered block 'nope'"),
                       ("<!-- rendered: speed -->\nno end\n", "without its")):
        (root / "docs/extra.md").write_text(text)
        with pytest.raises(SystemExit) as stop:
            readme.main(["--root", str(root)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: docs/extra.md:") and says in err[0]


def test_a_result_file_without_a_figure_or_a_folder_without_readme_is_one_line(tmp_path, capsys):
    root = tmp_path / "project"
    root.mkdir()
    project_copy(root)
    speed = json.loads((root / "metrics/speed.json").read_text())
    del speed["batch1_latency_ms"]
    (root / "metrics/speed.json").write_text(json.dumps(speed))
    for folder, says in ((root, "README.md: block 'speed' cannot be rendered from the result files (no "
                                "'batch1_latency_ms')"),
                         (tmp_path / "elsewhere", "README.md: not found")):
        with pytest.raises(SystemExit) as stop:
            readme.main(["--check", "--root", str(folder)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_the_readme_stays_within_200_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def figures(text: str) -> tuple[set[str], set[str]]:
    """The ``mean ± std`` pairs of ``text`` (signs as written, − read as -) and its other decimals."""
    text = text.replace("−", "-")
    pairs = {f"{mean.lstrip('+')} ± {std}" for mean, std in re.findall(r"([+-]?\d+\.\d+) ± (\d+\.\d+)", text)}
    alone = {number.lstrip("+-") for number in DECIMAL.findall(re.sub(r"[+-]?\d+\.\d+ ± \d+\.\d+", "", text))}
    return pairs, alone


def test_the_prose_of_the_results_cites_only_figures_its_tables_show():
    for path in (REPO / "README.md", REPO / "docs/results.md"):
        text = path.read_text()
        shown_pairs, shown = figures("".join(m["body"] for m in readme.BLOCK.finditer(text)))
        cited_pairs, cited = figures(re.sub(r"```.*?```", "", readme.BLOCK.sub("", text), flags=re.S))
        assert cited_pairs - shown_pairs == set(), path.name
        assert cited - shown - {number.lstrip("+-") for pair in shown_pairs for number in pair.split(" ± ")} == set()
    assert len(figures((REPO / "docs/results.md").read_text().split("## Reading")[1])[0]) > 30


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_every_relative_link_points_to_an_existing_file_and_heading():
    checked = 0
    for path in DOCUMENTS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.relative_to(REPO)}: {target}"
            if anchor:
                assert anchor in anchors(linked), f"{path.relative_to(REPO)}: {target}"
            checked += 1
    assert checked > 30


def test_every_param_is_documented_with_its_default():
    rows = {}
    for line in (REPO / "docs/params.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[tuple(re.findall(r"`([\w.]+)`", cells[0]))] = cells[1]

    def keys(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]

    for key, value in keys(DEFAULTS):
        (row,) = [names for names in rows if key in names]
        if len(row) == 1:
            assert rows[row] == f"`{json.dumps(value) if isinstance(value, list) else value}`", key


def test_the_image_limits_data_md_states_are_the_decoders():
    text = (REPO / "docs/data.md").read_text()
    assert f"{MAX_DECODED_BYTES // 2**20} MiB" in text and "MAX_DECODED_BYTES" in text
    assert f"{Image.MAX_IMAGE_PIXELS:,} pixels" in text and f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels" in text
    assert "8-bit RGB is read up to 8,192 × 8,192" in text
    assert working_set((8192, 8192), "RGB") <= MAX_DECODED_BYTES < working_set((8193, 8192), "RGB")
    assert "RGBA up to about 5,790 × 5,790" in text
    assert working_set((5790, 5790), "RGBA") <= MAX_DECODED_BYTES < working_set((5800, 5800), "RGBA")
    assert "12,000 × 12,000 16-bit gray image (275 MiB) is skipped" in text
    assert round(working_set((12000, 12000), "I;16") / 2**20) == 275
    # only 1-bit, gray and 16-bit images reach Pillow's warning threshold within SparseNet's limit
    side = int(Image.MAX_IMAGE_PIXELS ** 0.5) + 1
    reach = {mode for mode in ("1", "L", "P", "I;16", "RGB", "RGBA", "LA", "CMYK", "I", "F")
             if working_set((side, side), mode) <= MAX_DECODED_BYTES}
    assert reach == {"1", "L", "I;16"}


def test_a_pair_counts_each_seed_once_even_when_a_point_ran_at_two_commits():
    runs = pd.DataFrame([  # taylor seed 0 ran at two commits (90.0 and 92.0: 91.0 as one seed)
        ("taylor (global)", 0.9, 0, 0.900, "aaa"), ("taylor (global)", 0.9, 0, 0.920, "bbb"),
        ("taylor (global)", 0.9, 1, 0.890, "aaa"),
        ("magnitude (global)", 0.9, 0, 0.905, "aaa"), ("magnitude (global)", 0.9, 1, 0.900, "aaa"),
    ], columns=["line", "target_sparsity", "seed", "accuracy", "commit"]).assign(schedule="cubic")
    table = readme.frontier_pairs(runs)
    (row,) = [line for line in table.splitlines() if line.startswith("| taylor − magnitude")]
    # seed 0: 91.0 − 90.5 = +0.50 points; seed 1: 89.0 − 90.0 = −1.00; mean −0.25, std 1.06; ahead in 1 of 2
    assert row == "| taylor − magnitude (global) | -0.25 ± 1.06 (1/2) |"


def test_the_sentence_naming_the_default_run_follows_params_yaml(tmp_path):
    import yaml

    root = project_copy(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prune"].update(sparsity=0.9, epochs=1, scope="layer")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    readme.main(["--root", str(root)])
    said = block((root / "README.md").read_text(), "default-params")
    assert "to 90% over 1 cubic round and" in said and "the same sparsity in every layer" in said
    assert "95%" not in said
