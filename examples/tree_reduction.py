"""Tree reduction: the sum of N numbers by pairwise adds.

DAG shape: a binary tree of ``add`` tasks. The N numbers are constants in the
first level's arguments; each level adds neighbours in pairs, and when a level
has an odd count its last value moves up unchanged. A full binary tree with N
leaves has N - 1 internal nodes, so the DAG has exactly ``N - 1`` tasks, with
depth ``ceil(log2 N)``.

The numbers are 1..N by default (so the sum is N(N+1)/2), or N random integers
from ``--seed``.

Run: ``fanflow run examples/tree_reduction.py -- --n 1024`` or
``python examples/tree_reduction.py --n 1024``.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import fanflow


@fanflow.task
def add(a: int, b: int) -> int:
    return a + b


def numbers(n: int, seed: int | None = None) -> list[int]:
    """The inputs: 1..n, or n integers in [0, 1000) drawn from ``seed``."""
    if seed is None:
        return list(range(1, n + 1))
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


def build(n: int = 1024, seed: int | None = None) -> fanflow.Node:
    """The root of the add tree over ``numbers(n, seed)``; ``n - 1`` tasks."""
    if n < 2:
        raise ValueError(f"tree_reduction needs n >= 2 numbers, got {n}")
    level: list[Any] = numbers(n, seed)
    while len(level) > 1:
        paired = [add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    root: fanflow.Node = level[0]
    return root


def serial(n: int = 1024, seed: int | None = None) -> int:
    return sum(numbers(n, seed))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tree_reduction", description="The sum of N numbers by pairwise adds.")
    parser.add_argument("--n", type=int, default=1024, help="how many numbers to sum (>= 2)")
    parser.add_argument("--seed", type=int, default=None, help="random inputs from this seed instead of 1..n")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    return build(**vars(parse_args(argv)))


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    total = main(sys.argv[1:]).compute()
    expected = serial(**options)
    verdict = "matches" if total == expected else "DOES NOT MATCH"
    print(f"sum of {options['n']} numbers by {options['n'] - 1} pairwise adds: {total}")
    print(f"serial sum: {expected} ({verdict})")
    sys.exit(0 if total == expected else 1)
