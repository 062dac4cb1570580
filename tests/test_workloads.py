"""The workloads in examples/: node counts by formula, and results against their serial versions.

Each example is loaded with ``load_module`` (as ``fanflow run`` does), which
registers it with cloudpickle by value, so its tasks also reach workers in
other processes. Sizes are small: the point is the DAG shapes and the checks.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fanflow
from fanflow.cli.script import load_module
from fanflow.dag import DAG

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> Any:
    return load_module(str(EXAMPLES / f"{name}.py"))


def node_count(*sinks: fanflow.Node) -> int:
    return len(DAG.from_sinks(sinks))


@pytest.fixture(scope="module")
def tree_reduction() -> Any:
    return example("tree_reduction")


@pytest.mark.parametrize(("n", "seed"), [(2, None), (7, None), (64, 3), (1000, 11)])
def test_tree_reduction(tree_reduction: Any, run_config: fanflow.Config, n: int, seed: int | None) -> None:
    root = tree_reduction.build(n=n, seed=seed)
    assert node_count(root) == n - 1
    assert root.compute(run_config) == tree_reduction.serial(n=n, seed=seed)


def test_tree_reduction_rejects_fewer_than_two(tree_reduction: Any) -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        tree_reduction.build(n=1)


@pytest.mark.parametrize(("n", "block"), [(96, 32), (64, 64), (60, 15)])
def test_gemm(run_config: fanflow.Config, n: int, block: int) -> None:
    gemm = example("gemm")
    c = gemm.build(n=n, block=block, seed=5)
    g = n // block
    assert node_count(c) == g**3 + 3 * g**2 + 1
    result = c.compute(run_config)
    np.testing.assert_array_equal(result, gemm.serial(n=n, block=block, seed=5))
    a, b = gemm.matrices(n=n, block=block, seed=5)
    assert np.array_equal(result, a @ b) and np.abs(result).max() > 0


@pytest.mark.parametrize("chunks", [1, 5, 8])
def test_wordcount(run_config: fanflow.Config, chunks: int) -> None:
    wordcount = example("wordcount")
    options = {"chunks": chunks, "words": 3000, "k": 7, "seed": 2}
    top = wordcount.build(**options)
    assert node_count(top) == 3 * chunks
    result = top.compute(run_config)
    assert result == wordcount.serial(**options)
    assert len(result) == 7 and sum(n for _, n in result) <= chunks * 3000


@pytest.mark.parametrize(("size", "tile"), [(96, 32), (100, 30), (64, 64)])
def test_image_transform(run_config: fanflow.Config, size: int, tile: int) -> None:
    image_transform = example("image_transform")
    image = image_transform.build(size=size, tile=tile, seed=1)
    tiles = math.ceil(size / tile) ** 2
    assert node_count(image) == 5 * tiles + 2
    result = image.compute(run_config)
    assert result.shape == (size, size) and result.dtype == np.uint8
    np.testing.assert_array_equal(result, image_transform.serial(size=size, tile=tile, seed=1))
    # The halo makes tiling invisible: the same as the pipeline on the whole image.
    whole = image_transform.pipeline(image_transform.render_image(size, 1))
    np.testing.assert_array_equal(result, whole)
    assert 0 < int((result > 128).sum()) < size * size


@pytest.mark.parametrize(("rows", "cols", "block"), [(1200, 12, 100), (300, 20, 100), (240, 24, 240)])
def test_svd1(run_config: fanflow.Config, rows: int, cols: int, block: int) -> None:
    svd1 = example("svd1")
    options = {"rows": rows, "cols": cols, "block": block, "seed": 4}
    result = svd1.build(**options)
    assert node_count(*result) == 9 * (rows // block) + 3
    u, s, vt, error = fanflow.compute(*result, config=run_config)
    a = svd1.matrix(**options)
    expected = svd1.serial(**options)[1]
    assert u.shape == (rows, cols) and s.shape == (cols,) and vt.shape == (cols, cols)
    np.testing.assert_allclose(s, expected, rtol=1e-8, atol=0)
    np.testing.assert_allclose(s, svd1.spectrum(cols), rtol=1e-8, atol=0)
    np.testing.assert_allclose((u * s) @ vt, a, rtol=0, atol=1e-12 * np.abs(a).max())
    np.testing.assert_allclose(u.T @ u, np.eye(cols), atol=1e-12)
    assert error < 1e-12


def test_svd1_main_leaves_out_the_stacked_u() -> None:
    svd1 = example("svd1")
    summary = svd1.main(["--rows", "400", "--cols", "10", "--block", "100"])
    assert "stack" not in {dag_task.name for dag_task in DAG.from_sinks([summary]).tasks}
    assert node_count(summary) == 9 * 4 + 3


@pytest.mark.parametrize(("size", "block", "power"), [(400, 100, 2), (300, 300, 3), (240, 80, 1)])
def test_svd2(run_config: fanflow.Config, size: int, block: int, power: int) -> None:
    svd2 = example("svd2")
    k = 4
    result = svd2.build(size=size, block=block, k=k, oversample=10, power=power, seed=6)
    g = size // block
    assert node_count(*result) == (3 + 2 * power) * g**2 + 2 * power + 6
    u, s, vt = fanflow.compute(*result, config=run_config)
    assert u.shape == (size, k) and s.shape == (k,) and vt.shape == (k, size)
    # Accuracy grows with the power iterations: (σ_l+1 / σ_k)^(2·power+1) for l = k + oversample.
    rtol = 10 * svd2.DECAY ** (10 * (2 * power + 1))
    np.testing.assert_allclose(s, svd2.serial(size=size, k=k, seed=6), rtol=rtol, atol=0)
    np.testing.assert_allclose(s, svd2.spectrum(size)[:k], rtol=rtol, atol=0)
    np.testing.assert_allclose(u.T @ u, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(vt @ vt.T, np.eye(k), atol=1e-10)


def test_svd2_reference_accuracy(run_config: fanflow.Config) -> None:
    """With the defaults (k=5, oversampling 10, 2 power iterations) the top values are good to 1e-8."""
    svd2 = example("svd2")
    s = svd2.build(size=500, block=250, seed=0).s.compute(run_config)
    np.testing.assert_allclose(s, svd2.serial(size=500, k=5, seed=0), rtol=1e-8, atol=0)


@pytest.mark.parametrize("batches", [1, 6])
def test_text_analysis(run_config: fanflow.Config, batches: int) -> None:
    text_analysis = example("text_analysis")
    options = {"batches": batches, "docs": 40, "per_doc": 3, "top": 8, "seed": 9}
    report = text_analysis.build(**options)
    assert node_count(report) == 5 * batches
    result = report.compute(run_config)
    assert result == text_analysis.serial(**options)
    assert result["documents"] == batches * 40
    topic_words = {w for words in text_analysis.TOPICS.values() for w in words.split()}
    assert {term for term, _ in result["top_keywords"]} <= topic_words


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("tree_reduction", ["--n", "10"]),
        ("gemm", ["--n", "64", "--block", "32"]),
        ("wordcount", ["--chunks", "3", "--words", "100"]),
        ("image_transform", ["--size", "64", "--tile", "32"]),
        ("svd1", ["--rows", "400", "--cols", "10", "--block", "100"]),
        ("svd2", ["--size", "200", "--block", "100"]),
        ("text_analysis", ["--batches", "2", "--docs", "5"]),
    ],
)
def test_main_returns_nodes(run_config: fanflow.Config, name: str, argv: list[str]) -> None:
    sinks = example(name).main(argv)
    assert isinstance(sinks, fanflow.Node)
    assert sinks.compute(run_config) is not None


def test_fanflow_run_tree_reduction(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["fanflow", "run", str(EXAMPLES / "tree_reduction.py"), "--no-progress", "--", "--n", "64"],
        cwd=tmp_path,  # the run history goes to ./.fanflow: keep it out of the repository
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(64 * 65 // 2)


def test_tree_reduction_as_a_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "tree_reduction.py"), "--n", "100"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5050" in proc.stdout and "matches" in proc.stdout
