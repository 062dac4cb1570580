"""Tall-and-skinny SVD (m ≫ n) by TSQR.

A (m×n) is cut into p row blocks of ``block`` rows. Each block gets a QR,
A_i = Q_i·R_i; the R factors are reduced by a binary tree of QRs, each merge
factoring two stacked R's: [R_a; R_b] = Q_ab·R_ab. The root R has the same
singular values as A: R = U_r·S·Vᵀ. Then U comes back down the tree: the root's
W is U_r, each child's W is its half of the parent's Q times the parent's W,
and a leaf's block of U is U_i = Q_i·W_i.

The matrix has a known spectrum, and its blocks are made inside tasks from the
seed: A = D·C·diag(σ)·Vᵀ, with C the orthonormal DCT-II basis vectors of length
m at n frequencies drawn from the seed, D random row signs, V a random
orthogonal n×n matrix and σ spaced geometrically from 1 down to 1e-2. So the
singular values are exactly σ.

DAG shape, for p row blocks:

- ``rotation`` (V, 1 task) and ``make_block`` (p tasks);
- ``local_qr`` per block (p), ``merge_qr`` over the tree (p - 1), and a
  ``getitem`` taking R out of every (Q, R) of the tree (2p - 1);
- ``svd_of_r`` at the root (1) and a ``getitem`` for each of U_r, S, Vᵀ (3);
- ``descend`` per tree edge (2p - 2) and ``leaf_u`` per block (p);
- ``stack`` of the U blocks (1), and ``residual`` per block (p) with one
  fan-in ``relative_error`` = ‖U·S·Vᵀ − A‖_F / ‖A‖_F (1).

Node count of :func:`build` (all four outputs): ``9·p + 3``. ``main`` leaves out
the stacked U (m×n, as big as A) and adds a summary task: also ``9·p + 3``.

Run: ``fanflow run examples/svd1.py -- --rows 200000 --cols 1000 --block 10000`` or
``python examples/svd1.py`` (which also checks against numpy.linalg.svd).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NamedTuple

import numpy as np

import fanflow


class SVD(NamedTuple):
    """The sink nodes of the TSQR SVD; compute the ones you need (the rest does not run)."""

    u: fanflow.Node
    s: fanflow.Node
    vt: fanflow.Node
    error: fanflow.Node


class _Tree(NamedTuple):
    """A node of the QR tree: its (Q, R) node, its two children and, for a leaf, its row block (else -1)."""

    factor: fanflow.Node
    children: tuple[_Tree, _Tree] | None
    block: int


def spectrum(cols: int) -> np.ndarray:
    """The singular values of the matrix: geometric from 1 down to 1e-2."""
    return np.logspace(0, -2, cols)


def frequencies(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).choice(rows, size=cols, replace=False)


def random_rotation(seed: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng([seed, 1]).standard_normal((cols, cols)))
    return q * np.sign(np.diag(r))


def block_of(seed: int, index: int, block: int, rows: int, v: np.ndarray) -> np.ndarray:
    """Rows [index·block, (index+1)·block) of A, computed from the seed alone."""
    cols = v.shape[0]
    freq = frequencies(rows, cols, seed)
    i = np.arange(index * block, (index + 1) * block)[:, None] + 0.5
    basis = np.sqrt(2.0 / rows) * np.cos(np.pi * i * freq / rows)
    basis[:, freq == 0] /= np.sqrt(2.0)
    signs = np.random.default_rng([seed, 2, index]).choice([-1.0, 1.0], size=(block, 1))
    return (signs * basis * spectrum(cols)) @ v.T


@fanflow.task
def rotation(seed: int, cols: int) -> np.ndarray:
    return random_rotation(seed, cols)


@fanflow.task
def make_block(seed: int, index: int, block: int, rows: int, v: np.ndarray) -> np.ndarray:
    return block_of(seed, index, block, rows, v)


@fanflow.task
def local_qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, r = np.linalg.qr(a)
    return q, r


@fanflow.task
def merge_qr(r_top: np.ndarray, r_bottom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, r = np.linalg.qr(np.vstack([r_top, r_bottom]))
    return q, r


@fanflow.task
def svd_of_r(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(r)
    return u, s, vt


@fanflow.task
def descend(factor: tuple[np.ndarray, np.ndarray], w: np.ndarray, half: int) -> np.ndarray:
    n = w.shape[0]
    return factor[0][half * n : (half + 1) * n] @ w


@fanflow.task
def leaf_u(factor: tuple[np.ndarray, np.ndarray], w: np.ndarray) -> np.ndarray:
    return factor[0] @ w


@fanflow.task
def stack(blocks: list[np.ndarray]) -> np.ndarray:
    return np.vstack(blocks)


@fanflow.task
def residual(a: np.ndarray, u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> tuple[float, float]:
    """Squared Frobenius norms of this block's reconstruction error and of the block."""
    return float(np.sum(((u * s) @ vt - a) ** 2)), float(np.sum(a**2))


@fanflow.task
def relative_error(parts: list[tuple[float, float]]) -> float:
    return float(np.sqrt(sum(e for e, _ in parts) / sum(n for _, n in parts)))


@fanflow.task
def summarize(s: np.ndarray, error: float, rows: int) -> dict[str, Any]:
    return {
        "shape": [rows, len(s)],
        "largest": [round(float(x), 12) for x in s[:3]],
        "smallest": round(float(s[-1]), 12),
        "max_rel_error_vs_known": float(np.max(np.abs(s - spectrum(len(s))) / spectrum(len(s)))),
        "reconstruction_error": error,
    }


def _blocks(rows: int, cols: int, block: int) -> int:
    if cols < 1 or block < cols or rows % block:
        raise ValueError(f"svd1 needs cols <= block and block dividing rows, got {rows}×{cols} in {block}-row blocks")
    return rows // block


def build(rows: int = 4000, cols: int = 50, block: int = 500, seed: int = 0) -> SVD:
    """The thin SVD of the rows×cols matrix as nodes (U, S, Vᵀ, relative error); ``9·p + 3`` tasks."""
    p = _blocks(rows, cols, block)
    v = rotation(seed, cols)
    a = [make_block(seed, i, block, rows, v) for i in range(p)]
    level = [_Tree(local_qr(a_i), None, i) for i, a_i in enumerate(a)]
    while len(level) > 1:
        paired = [
            _Tree(merge_qr(left.factor[1], right.factor[1]), (left, right), -1)
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    root = svd_of_r(level[0].factor[1])
    s, vt = root[1], root[2]
    u_blocks: list[Any] = [None] * p
    pending = [(level[0], root[0])]
    while pending:
        tree, w = pending.pop()
        if tree.children is None:
            u_blocks[tree.block] = leaf_u(tree.factor, w)
        else:
            pending.extend((child, descend(tree.factor, w, half)) for half, child in enumerate(tree.children))
    error = relative_error([residual(a[i], u_blocks[i], s, vt) for i in range(p)])
    return SVD(stack(u_blocks), s, vt, error)


def matrix(rows: int = 4000, cols: int = 50, block: int = 500, seed: int = 0) -> np.ndarray:
    """The whole matrix A, from the same blocks the DAG makes."""
    v = random_rotation(seed, cols)
    return np.vstack([block_of(seed, i, block, rows, v) for i in range(_blocks(rows, cols, block))])


def serial(
    rows: int = 4000, cols: int = 50, block: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's thin SVD of the same matrix: (U, S, Vᵀ)."""
    u, s, vt = np.linalg.svd(matrix(rows, cols, block, seed), full_matrices=False)
    return u, s, vt


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="svd1", description="Tall-and-skinny SVD by TSQR.")
    parser.add_argument("--rows", type=int, default=4000, help="rows m of the matrix")
    parser.add_argument("--cols", type=int, default=50, help="columns n of the matrix (n <= block)")
    parser.add_argument("--block", type=int, default=500, help="rows per block (must divide m)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrix")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    """A summary: the extreme singular values, their error vs the known spectrum, ‖U·S·Vᵀ − A‖/‖A‖."""
    options = vars(parse_args(argv))
    result = build(**options)
    return summarize(result.s, result.error, options["rows"])


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    result = build(**options)
    summary, s = fanflow.compute(summarize(result.s, result.error, options["rows"]), result.s)
    expected = serial(**options)[1]
    worst = float(np.max(np.abs(s - expected) / expected))
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"max relative error vs numpy.linalg.svd: {worst:.2e} ({'ok' if worst < 1e-8 else 'TOO LARGE'})")
    sys.exit(0 if worst < 1e-8 else 1)
