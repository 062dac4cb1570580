"""Word count: split a text into chunks, count per chunk, merge in a tree, take the top k.

The text is generated, never downloaded: pseudo-words drawn with Zipf-like
frequencies, chunk by chunk, each chunk from its own random stream. So chunk i
is produced by a task of its own and the text never passes through the client.

DAG shape, for c chunks:

- ``read_chunk``: one task per chunk, producing its text (c tasks);
- ``count``: one task per chunk, a Counter of its words (c tasks);
- ``merge``: a binary tree of pairwise Counter merges, an odd one out moving
  up a level unchanged (c - 1 tasks);
- ``top``: the k most frequent words, ties broken alphabetically (1 task).

Node count: ``3·c``.

Run: ``fanflow run examples/wordcount.py -- --chunks 16 --words 50000 --k 10`` or
``python examples/wordcount.py --chunks 16``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from typing import Any

import fanflow

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "dan", "el", "or", "qui", "zu", "bra", "sen")


def vocabulary(size: int = 2000) -> list[str]:
    """``size`` distinct pseudo-words, always the same ones (fixed seed)."""
    rng = random.Random(20240601)
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))] = None
    return list(words)


def chunk_text(seed: int, index: int, words: int) -> str:
    """Chunk ``index`` of the text: ``words`` words on lines of up to 12 words."""
    vocab = vocabulary()
    # Zipf-like: the r-th most common word has weight 1/r.
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    rng = random.Random(f"{seed}:{index}")
    drawn = rng.choices(vocab, weights=weights, k=words)
    return "\n".join(" ".join(drawn[i : i + 12]) for i in range(0, words, 12))


def top_k(counts: Counter[str], k: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]


@fanflow.task
def read_chunk(seed: int, index: int, words: int) -> str:
    return chunk_text(seed, index, words)


@fanflow.task
def count(text: str) -> Counter[str]:
    return Counter(text.split())


@fanflow.task
def merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    merged = Counter(a)  # a copy: upstream values may be shared objects
    merged.update(b)
    return merged


@fanflow.task
def top(counts: Counter[str], k: int) -> list[tuple[str, int]]:
    return top_k(counts, k)


def build(chunks: int = 8, words: int = 5000, k: int = 10, seed: int = 0) -> fanflow.Node:
    """The top-k (word, count) list; ``3·chunks`` tasks."""
    if chunks < 1 or words < 1 or k < 1:
        raise ValueError(f"wordcount needs chunks, words and k >= 1, got {chunks}, {words}, {k}")
    level: list[Any] = [count(read_chunk(seed, i, words)) for i in range(chunks)]
    while len(level) > 1:
        paired = [merge(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return top(level[0], k)


def serial(chunks: int = 8, words: int = 5000, k: int = 10, seed: int = 0) -> list[tuple[str, int]]:
    """The same text as one string, counted in one pass."""
    text = "\n".join(chunk_text(seed, i, words) for i in range(chunks))
    return top_k(Counter(text.split()), k)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wordcount", description="Word count with a merge tree and top k.")
    parser.add_argument("--chunks", type=int, default=8, help="number of text chunks (count tasks)")
    parser.add_argument("--words", type=int, default=5000, help="words per chunk")
    parser.add_argument("--k", type=int, default=10, help="how many top words to return")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated text")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    return build(**vars(parse_args(argv)))


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    result = main(sys.argv[1:]).compute()
    ok = result == serial(**options)
    print(f"top {options['k']} of {options['chunks'] * options['words']} words in {options['chunks']} chunks:")
    for word, n in result:
        print(f"  {word:<12} {n}")
    print(f"equals the serial count: {ok}")
    sys.exit(0 if ok else 1)
