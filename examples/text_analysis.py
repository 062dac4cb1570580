"""Text analysis: TF-IDF keywords of a generated corpus, fan-out → fan-in → fan-out → fan-in.

A corpus of short documents is generated in batches (each document is about
one of a few topics, written from small bundled word lists), then:

1. ``generate``: one task per batch writes its documents (fan-out);
2. ``tokenize``: per batch, lowercase, strip punctuation, drop stopwords;
3. ``doc_freq``: per batch, in how many documents each term appears;
4. ``merge``: a binary tree of merges into the corpus document frequencies
   (fan-in; an odd one out moves up a level unchanged);
5. ``keywords``: per batch again, each document's top terms by TF-IDF against
   the corpus frequencies (fan-out of the merged result to every batch);
6. ``report``: one fan-in counting how often each term is a keyword.

Node count, for B batches: ``B + B + B + (B - 1) + B + 1 = 5·B``.

Run: ``fanflow run examples/text_analysis.py -- --batches 16 --docs 200`` or
``python examples/text_analysis.py --batches 16``.
"""

from __future__ import annotations

import argparse
import math
import random
import string
import sys
from collections import Counter
from typing import Any

import fanflow

TOPICS = {
    "space": "planet orbit rocket comet galaxy telescope astronaut nebula launch gravity asteroid satellite",
    "cooking": "recipe oven garlic simmer flour butter saucepan basil roast dough pepper kitchen",
    "sailing": "harbor anchor mast keel tide wind sail crew starboard compass voyage rope",
    "music": "melody chord rhythm guitar tempo chorus violin drum harmony concert lyric piano",
    "gardening": "soil compost seedling prune bloom trowel mulch orchard weed harvest root greenhouse",
}
_FILLER_TEXT = (
    "people often say that every day brings something new while others think about time work life place "
    "way world year thing part group number point home water room story fact month lot right study book "
    "eye job word business issue side kind head house friend hour game line end member law car city"
)
_STOPWORD_TEXT = (
    "a an the and or but of to in on at for with about as by from is are was were be been it this that "
    "these those there their they we you he she i its our my your his her not no so then than"
)
FILLER = tuple(_FILLER_TEXT.split())
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_GLUE = ("the", "a", "and", "of", "to", "in", "with", "is", "was", "that", "on", "for", "by", "not")


def write_document(rng: random.Random) -> str:
    """One document: sentences mixing glue words, filler and one topic's words."""
    topic = TOPICS[rng.choice(sorted(TOPICS))].split()
    sentences = []
    for _ in range(rng.randint(2, 6)):
        words = [
            rng.choice(topic) if roll < 0.3 else rng.choice(FILLER) if roll < 0.65 else rng.choice(_GLUE)
            for roll in (rng.random() for _ in range(rng.randint(6, 14)))
        ]
        sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
    return " ".join(sentences)


def write_batch(seed: int, batch: int, docs: int) -> list[str]:
    rng = random.Random(f"{seed}:{batch}")
    return [write_document(rng) for _ in range(docs)]


_STRIP = str.maketrans("", "", string.punctuation)


def terms_of(doc: str) -> list[str]:
    return [w for w in doc.lower().translate(_STRIP).split() if w not in STOPWORDS]


def frequencies(tokens: list[list[str]]) -> Counter[str]:
    """Document frequency: in how many of these documents each term appears."""
    return Counter(term for doc in tokens for term in set(doc))


def top_terms(tokens: list[list[str]], df: Counter[str], n_docs: int, per_doc: int) -> list[list[str]]:
    """Each document's ``per_doc`` terms of highest TF-IDF, ties broken alphabetically."""
    out = []
    for doc in tokens:
        tf = Counter(doc)
        scores = {t: c / len(doc) * math.log(n_docs / df[t]) for t, c in tf.items()}
        out.append([t for t, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:per_doc]])
    return out


def summary(keyword_lists: list[list[list[str]]], df: Counter[str], top: int) -> dict[str, Any]:
    picks = Counter(term for batch in keyword_lists for doc in batch for term in doc)
    return {
        "documents": sum(len(batch) for batch in keyword_lists),
        "vocabulary": len(df),
        "top_keywords": sorted(picks.items(), key=lambda item: (-item[1], item[0]))[:top],
    }


@fanflow.task
def generate(seed: int, batch: int, docs: int) -> list[str]:
    return write_batch(seed, batch, docs)


@fanflow.task
def tokenize(docs: list[str]) -> list[list[str]]:
    return [terms_of(doc) for doc in docs]


@fanflow.task
def doc_freq(tokens: list[list[str]]) -> Counter[str]:
    return frequencies(tokens)


@fanflow.task
def merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    merged = Counter(a)  # a copy: upstream values may be shared objects
    merged.update(b)
    return merged


@fanflow.task
def keywords(tokens: list[list[str]], df: Counter[str], n_docs: int, per_doc: int) -> list[list[str]]:
    return top_terms(tokens, df, n_docs, per_doc)


@fanflow.task
def report(keyword_lists: list[list[list[str]]], df: Counter[str], top: int) -> dict[str, Any]:
    return summary(keyword_lists, df, top)


def build(batches: int = 8, docs: int = 50, per_doc: int = 3, top: int = 10, seed: int = 0) -> fanflow.Node:
    """The corpus report (documents, vocabulary size, top keywords); ``5·batches`` tasks."""
    if min(batches, docs, per_doc, top) < 1:
        raise ValueError("text_analysis needs batches, docs, per_doc and top >= 1")
    tokens = [tokenize(generate(seed, b, docs)) for b in range(batches)]
    level: list[Any] = [doc_freq(t) for t in tokens]
    while len(level) > 1:
        paired = [merge(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    df = level[0]
    return report([keywords(t, df, batches * docs, per_doc) for t in tokens], df, top)


def serial(batches: int = 8, docs: int = 50, per_doc: int = 3, top: int = 10, seed: int = 0) -> dict[str, Any]:
    tokens = [[terms_of(doc) for doc in write_batch(seed, b, docs)] for b in range(batches)]
    df = frequencies([doc for batch in tokens for doc in batch])
    return summary([top_terms(t, df, batches * docs, per_doc) for t in tokens], df, top)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="text_analysis", description="TF-IDF keywords of a generated corpus.")
    parser.add_argument("--batches", type=int, default=8, help="document batches (parallel tasks per stage)")
    parser.add_argument("--docs", type=int, default=50, help="documents per batch")
    parser.add_argument("--per-doc", type=int, default=3, help="keywords kept per document")
    parser.add_argument("--top", type=int, default=10, help="keywords in the report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    return build(**vars(parse_args(argv)))


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    result = main(sys.argv[1:]).compute()
    ok = result == serial(**options)
    print(f"{result['documents']} documents, {result['vocabulary']} distinct terms; most frequent keywords:")
    for term, n in result["top_keywords"]:
        print(f"  {term:<12} {n}")
    print(f"equals the serial analysis: {ok}")
    sys.exit(0 if ok else 1)
