"""Image transform: cut an image into tiles, run a chain of transforms per tile, rebuild it.

The image is drawn inside a task (numpy gradients and noise, Pillow shapes), so
only its seed leaves the client. Every tile runs four separate tasks in
sequence: grayscale, a 5×5 blur, edge detection, then a fixed contrast stretch.

Tiles are cut with a halo of ``HALO`` pixels of their neighbours (clipped at
the image border), which is what the two neighbourhood filters read (2 pixels
for the blur, 1 for the edges); the halo is cropped off when the image is
rebuilt. So the result has no seams: it equals both the pipeline applied tile
by tile serially (:func:`serial`) and the pipeline applied to the whole image.

DAG shape, with T = ceil(size / tile)² tiles:

- ``render``: the source image (1 task);
- ``cut``: one tile with its halo per task (T tasks);
- ``grayscale`` → ``blur`` → ``edges`` → ``contrast``: a chain per tile (4·T tasks);
- ``assemble``: a fan-in cropping the halos and placing the tiles (1 task).

Node count: ``5·T + 2``.

Run: ``fanflow run examples/image_transform.py -- --size 1024 --tile 256`` or
``python examples/image_transform.py --size 1024 --tile 256``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import fanflow

HALO = 3
_BINOMIAL = (1, 4, 6, 4, 1)
_BLUR = ImageFilter.Kernel((5, 5), [a * b for a in _BINOMIAL for b in _BINOMIAL], scale=256)
CONTRAST_GAIN = 4


def render_image(size: int, seed: int) -> np.ndarray:
    """A size×size RGB test image: a colour gradient, random shapes and a little noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)
    base = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp[::-1], ramp) / 2, np.full((size, size), 96)], -1)
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(24):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 16 + 1, size // 3 + 2, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def to_gray(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile, "RGB").convert("L"))


def to_blurred(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile, "L").filter(_BLUR))


def to_edges(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile, "L").filter(ImageFilter.FIND_EDGES))


def to_contrast(tile: np.ndarray) -> np.ndarray:
    # A fixed gain rather than an auto-contrast: a per-tile statistic would make tiles disagree.
    return np.clip(tile.astype(np.uint16) * CONTRAST_GAIN, 0, 255).astype(np.uint8)


def pipeline(image: np.ndarray) -> np.ndarray:
    return to_contrast(to_edges(to_blurred(to_gray(image))))


def tile_origins(size: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the tiles, row by row."""
    return [(top, left) for top in range(0, size, tile) for left in range(0, size, tile)]


def halo_box(size: int, top: int, left: int, tile: int) -> tuple[int, int, int, int]:
    """Rows and columns (start, stop, start, stop) of a tile grown by the halo, inside the image."""
    return (max(0, top - HALO), min(size, top + tile + HALO), max(0, left - HALO), min(size, left + tile + HALO))


def place(size: int, tile: int, tiles: list[np.ndarray]) -> np.ndarray:
    """The image rebuilt from processed tiles (with halos), in ``tile_origins`` order."""
    out = np.empty((size, size), dtype=np.uint8)
    for (top, left), processed in zip(tile_origins(size, tile), tiles, strict=True):
        r0, _, c0, _ = halo_box(size, top, left, tile)
        bottom, right = min(size, top + tile), min(size, left + tile)
        out[top:bottom, left:right] = processed[top - r0 : bottom - r0, left - c0 : right - c0]
    return out


@fanflow.task
def render(size: int, seed: int) -> np.ndarray:
    return render_image(size, seed)


@fanflow.task
def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    r0, r1, c0, c1 = box
    return image[r0:r1, c0:c1].copy()  # a copy, so the tile does not keep the whole image alive


@fanflow.task
def grayscale(tile: np.ndarray) -> np.ndarray:
    return to_gray(tile)


@fanflow.task
def blur(tile: np.ndarray) -> np.ndarray:
    return to_blurred(tile)


@fanflow.task
def edges(tile: np.ndarray) -> np.ndarray:
    return to_edges(tile)


@fanflow.task
def contrast(tile: np.ndarray) -> np.ndarray:
    return to_contrast(tile)


@fanflow.task
def assemble(size: int, tile: int, tiles: list[np.ndarray]) -> np.ndarray:
    return place(size, tile, tiles)


@fanflow.task
def summarize(image: np.ndarray) -> dict[str, Any]:
    return {"shape": list(image.shape), "mean": round(float(image.mean()), 3), "edge_pixels": int((image > 128).sum())}


def tile_count(size: int, tile: int) -> int:
    return math.ceil(size / tile) ** 2


def _check(size: int, tile: int) -> None:
    if size < 1 or tile < 1:
        raise ValueError(f"image_transform needs size and tile >= 1, got size={size}, tile={tile}")


def build(size: int = 256, tile: int = 64, seed: int = 0) -> fanflow.Node:
    """The transformed grayscale image (size×size uint8); ``5·T + 2`` tasks."""
    _check(size, tile)
    image = render(size, seed)
    tiles = [
        contrast(edges(blur(grayscale(cut(image, halo_box(size, top, left, tile))))))
        for top, left in tile_origins(size, tile)
    ]
    return assemble(size, tile, tiles)


def serial(size: int = 256, tile: int = 64, seed: int = 0) -> np.ndarray:
    """The same pipeline, tile by tile, in one loop."""
    _check(size, tile)
    image = render_image(size, seed)
    tiles = []
    for top, left in tile_origins(size, tile):
        r0, r1, c0, c1 = halo_box(size, top, left, tile)
        tiles.append(pipeline(image[r0:r1, c0:c1]))
    return place(size, tile, tiles)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="image_transform", description="Tiled image transform pipeline.")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--tile", type=int, default=64, help="tile side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated image")
    return parser.parse_args(argv)


def main(argv: list[str]) -> fanflow.Node:
    """A summary of the result (shape, mean, edge pixels): the image is too big to print."""
    return summarize(build(**vars(parse_args(argv))))


if __name__ == "__main__":
    options = vars(parse_args(sys.argv[1:]))
    result = build(**options).compute()
    ok = bool(np.array_equal(result, serial(**options)))
    seamless = bool(np.array_equal(result, pipeline(render_image(options["size"], options["seed"]))))
    tiles = tile_count(options["size"], options["tile"])
    print(f"{options['size']}×{options['size']} image in {tiles} tiles, 4 transforms each: {5 * tiles + 2} tasks")
    print(f"equals the serial tile-by-tile pipeline: {ok}; equals the whole-image pipeline: {seamless}")
    sys.exit(0 if ok else 1)
