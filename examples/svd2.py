"""Randomized SVD of a large square matrix in blocks (rank k, oversampling, power iterations).

The size×size matrix A is a g×g grid of b×b blocks, each made inside a task
from the seed. Its spectrum is known: A = U·diag(σ)·Vᵀ with σ_l = DECAY**l for
l < r = min(size, MAX_RANK), where U and V are orthonormal DCT-II basis
vectors at r random frequencies with random row signs; any block
A_ij = U_i·diag(σ)·V_jᵀ is computed from its row and column indices alone.

The algorithm (Halko, Martinsson and Tropp, 2011), with l = k + oversample:

1. a Gaussian sketch Ω (size×l) and Y = A·Ω;
2. Q = orth(Y); then ``power`` times: Q = orth(Aᵀ·Q), Q = orth(A·Q), which
   sharpens the spectrum (QR in between keeps it stable);
3. Z = Aᵀ·Q, so B = Zᵀ = Qᵀ·A (l×size); B = Ũ·S·Vᵀ, and U = Q·Ũ;
   keep the top k.

Every product with A is one task per block (A_ij·X_j or A_ijᵀ·X_i, b×l
results) and one fan-in that sums them by row block and orthonormalizes (the
tall-skinny matrices are small: size×l).

DAG shape: g² ``make_block``, 1 ``sketch``; per product with A, g² products and
1 fan-in (there are 2 + 2·power of them); 3 ``getitem`` for U, S, Vᵀ.

Node count: ``(3 + 2·power)·g² + 2·power + 6``.

Run: ``fanflow run examples/svd2.py -- --size 10000 --block 2000 --k 5`` or
``python examples/svd2.py`` (which also checks against the known spectrum).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NamedTuple

import numpy as np

import fanflow

DECAY = 0.8
MAX_RANK = 100


class SVD(NamedTuple):
    """The sink nodes: the top-k singular vectors and values."""

    u: fanflow.Node
    s: fanflow.Node
    vt: fanflow.Node


def spectrum(size: int) -> np.ndarray:
    """All nonzero singular values of the matrix, largest first."""
    return DECAY ** np.arange(min(size, MAX_RANK))


def basis(seed: int, side: int, size: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of U (side 0) or V (side 1): orthonormal columns, from the seed alone."""
    rng = np.random.default_rng([seed, side])
    rank = min(size, MAX_RANK)
    freq = rng.choice(size, size=rank, replace=False)
    signs = rng.choice([-1.0, 1.0], size=size)[start:stop, None]
    i = np.arange(start, stop)[:, None] + 0.5
    cols = np.sqrt(2.0 / size) * np.cos(np.pi * i * freq / size)
    cols[:, freq == 0] /= np.sqrt(2.0)
    return signs * cols


def block_of(seed: int, i: int, j: int, block: int, size: int) -> np.ndarray:
    u = basis(seed, 0, size, i * block, (i + 1) * block)
    v = basis(seed, 1, size, j * block, (j + 1) * block)
    return (u * spectrum(size)) @ v.T


@fanflow.task
def make_block(seed: int, i: int, j: int, block: int, size: int) -> np.ndarray:
    return block_of(seed, i, j, block, size)


@fanflow.task
def sketch(seed: int, size: int, width: int) -> np.ndarray:
    return np.random.default_rng([seed, 2]).standard_normal((size, width))


@fanflow.task
def multiply(a: np.ndarray, x: np.ndarray, j: int) -> np.ndarray:
    """A_ij·X_j: block (i, j)'s share of row block i of A·X."""
    b = a.shape[1]
    return a @ x[j * b : (j + 1) * b]


@fanflow.task
def multiply_t(a: np.ndarray, x: np.ndarray, i: int) -> np.ndarray:
    """A_ijᵀ·X_i: block (i, j)'s share of row block j of Aᵀ·X."""
    b = a.shape[0]
    return a.T @ x[i * b : (i + 1) * b]


def _sum_rows(shares: list[list[np.ndarray]]) -> np.ndarray:
    """The tall matrix whose row block r is the sum of ``shares[r]``."""
    return np.vstack([np.sum(row, axis=0) for row in shares])


@fanflow.task
def orthonormalize(shares: list[list[np.ndarray]]) -> np.ndarray:
    q, _ = np.linalg.qr(_sum_rows(shares))
    return q


@fanflow.task
def finish(shares: list[list[np.ndarray]], q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k SVD from the shares of Z = Aᵀ·Q, i.e. of B = Zᵀ = Qᵀ·A."""
    u_b, s, vt = np.linalg.svd(_sum_rows(shares).T, full_matrices=False)
    return q @ u_b[:, :k], s[:k], vt[:k]


def _grid(size: int, block: int, k: int, oversample: int, power: int) -> int:
    if block < 1 or size % block:
        raise ValueError(f"svd2 needs a block size dividing size, got size={size}, block={block}")
    if k < 1 or oversample < 0 or power < 0 or k + oversample > size:
        raise ValueError(
            f"svd2 needs k >= 1, oversample >= 0, power >= 0, k + oversample <= size, got {k}, {oversample}, {power}"
        )
    return size // block


def build(size: int = 2000, block: int = 500, k: int = 5, oversample: int = 10, power: int = 2, seed: int = 0) -> SVD:
    """The top-k randomized SVD as nodes (U, S, Vᵀ); ``(3 + 2·power)·g² + 2·power + 6`` tasks."""
    g = _grid(size, block, k, oversample, power)
    a = [[make_block(seed, i, j, block, size) for j in range(g)] for i in range(g)]

    def times_a(x: fanflow.Node) -> list[list[fanflow.Node]]:
        return [[multiply(a[i][j], x, j) for j in range(g)] for i in range(g)]

    def times_a_t(x: fanflow.Node) -> list[list[fanflow.Node]]:
        return [[multiply_t(a[i][j], x, i) for i in range(g)] for j in range(g)]

    q = orthonormalize(times_a(sketch(seed, size, k + oversample)))
    for _ in range(power):
        q = orthonormalize(times_a(orthonormalize(times_a_t(q))))
    result = finish(times_a_t(q), q, k)
    return SVD(result[0], result[1], result[2])


def matrix(size: int = 2000, seed: int = 0) -> np.ndarray:
    """The whole matrix A (the same for every block size)."""
    return (basis(seed, 0, size, 0, size) * spectrum(size)) @ basis(seed, 1, size, 0, size).T


def serial(size: int = 2000, k: int = 5, seed: int = 0) -> np.ndarray:
    """The top-k singular values of the same matrix, by numpy.linalg.svd."""
    return np.linalg.svd(matrix(size, seed), compute_uv=False)[:k]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="svd2", description="Blocked randomized SVD of a square matrix.")
    parser.add_argument("--size", type=int, default=2000, help="matrix side")
    parser.add_argument("--block", type=int, default=500, help="block side (must divide size)")
    parser.add_argument("--k", type=int, default=5, help="how many singular values/vectors")
    parser.add_argument("--oversample", type=int, default=10, help="extra sketch columns")
    parser.add_argument("--power", type=int, default=2, help="power iterations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrix and the sketch")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    """The top-k singular values."""
    return build(**vars(parse_args(argv))).s


def report(s: np.ndarray, size: int) -> dict[str, Any]:
    known = spectrum(size)[: len(s)]
    return {"singular_values": s.round(12).tolist(), "max_rel_error_vs_known": float(np.max(np.abs(s - known) / known))}


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    summary = report(main(sys.argv[1:]).compute(), options["size"])
    for key, value in summary.items():
        print(f"{key}: {value}")
    ok = summary["max_rel_error_vs_known"] < 1e-8
    print("matches the known spectrum to 1e-8" if ok else "DOES NOT match the known spectrum to 1e-8")
    sys.exit(0 if ok else 1)
