"""Blocked matrix multiply: C = A·B for n×n matrices in b×b blocks (numpy).

DAG shape, with g = n / b blocks per side:

- ``make_block``: one task per block of A and of B (2·g² tasks), each generating
  its block from the seed, so no matrix is shipped from the client;
- ``multiply``: one task per block product A[i,k]·B[k,j] (g³ tasks);
- ``add_up``: one fan-in per block of C summing its g products (g² tasks);
- ``assemble``: one fan-in of the g² blocks of C into the full matrix (1 task).

Node count: ``g³ + 3·g² + 1``.

The entries are small integers stored as float64, so every product and partial
sum is an integer below 2**53: BLAS computes them exactly in any order, and the
result equals ``A @ B`` bit for bit, whatever the blocking.

Run: ``fanflow run examples/gemm.py -- --n 512 --block 128`` or
``python examples/gemm.py --n 512 --block 128``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

import fanflow

# Entries lie in [-LIMIT, LIMIT]; |C[i, j]| <= n·LIMIT² stays far below 2**53.
LIMIT = 8
_MATRIX_IDS = {"A": 0, "B": 1}


def block_of(seed: int, matrix: str, i: int, j: int, block: int) -> np.ndarray:
    """Block (i, j) of matrix "A" or "B": its own random stream, so any block can be made alone."""
    rng = np.random.default_rng([seed, _MATRIX_IDS[matrix], i, j])
    return rng.integers(-LIMIT, LIMIT + 1, size=(block, block)).astype(np.float64)


@fanflow.task
def make_block(seed: int, matrix: str, i: int, j: int, block: int) -> np.ndarray:
    return block_of(seed, matrix, i, j, block)


@fanflow.task
def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


@fanflow.task
def add_up(products: list[np.ndarray]) -> np.ndarray:
    total = products[0].copy()  # upstream values may be shared objects: never modify them
    for p in products[1:]:
        total += p
    return total


@fanflow.task
def assemble(blocks: list[list[np.ndarray]]) -> np.ndarray:
    return np.block(blocks)


@fanflow.task
def summarize(c: np.ndarray) -> dict[str, Any]:
    return {"shape": list(c.shape), "sum": int(c.sum()), "trace": int(np.trace(c))}


def _grid(n: int, block: int) -> int:
    if block < 1 or n < block or n % block:
        raise ValueError(f"gemm needs a block size dividing n, got n={n}, block={block}")
    return n // block


def build(n: int = 256, block: int = 64, seed: int = 0) -> fanflow.Node:
    """The full product C as one node; ``g³ + 3·g² + 1`` tasks with ``g = n // block``."""
    g = _grid(n, block)
    a = [[make_block(seed, "A", i, k, block) for k in range(g)] for i in range(g)]
    b = [[make_block(seed, "B", k, j, block) for j in range(g)] for k in range(g)]
    c = [[add_up([multiply(a[i][k], b[k][j]) for k in range(g)]) for j in range(g)] for i in range(g)]
    return assemble(c)


def matrices(n: int = 256, block: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A and B in full, made from the same blocks as the DAG makes them."""
    g = _grid(n, block)
    a = np.block([[block_of(seed, "A", i, k, block) for k in range(g)] for i in range(g)])
    b = np.block([[block_of(seed, "B", k, j, block) for j in range(g)] for k in range(g)])
    return a, b


def serial(n: int = 256, block: int = 64, seed: int = 0) -> np.ndarray:
    a, b = matrices(n, block, seed)
    return a @ b


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gemm", description="Blocked matrix multiply C = A·B.")
    parser.add_argument("--n", type=int, default=256, help="matrix side")
    parser.add_argument("--block", type=int, default=64, help="block side (must divide n)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random matrices")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    """A summary of C (shape, sum, trace): C itself is too big to print."""
    return summarize(build(**vars(parse_args(argv))))


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    c = build(**options).compute()
    expected = serial(**options)
    ok = bool(np.array_equal(c, expected))
    g = options["n"] // options["block"]
    print(f"C = A·B, {c.shape[0]}×{c.shape[1]} in {g}×{g} blocks: {g**3 + 3 * g**2 + 1} tasks")
    print(f"sum {int(c.sum())}, trace {int(np.trace(c))}; equals serial A @ B: {ok}")
    sys.exit(0 if ok else 1)
