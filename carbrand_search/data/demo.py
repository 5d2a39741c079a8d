"""A synthetic car-brand ImageFolder: learnable, not trivial, small enough for a CPU.

Each brand has an emblem (shape + colour), a body style and a grille pattern; body colour,
background, position, scale, facing and a viewpoint-like shear are random for every image, so a
model has to find the brand cues rather than memorise pictures.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from carbrand_search.core.errors import UserError
from carbrand_search.core.folders import refuse_non_empty

BRANDS = (
    "Astra Motors", "Borealis", "Corvid", "Dorado Works", "Equinox", "Falcata", "Gryphon",
    "Halcyon", "Ibis", "Juniper Auto", "Kestrel", "Lumen", "Meridian", "Nimbus", "Orca",
    "Pallas", "Quill", "Rowan", "Sable", "Tarn", "Umbra", "Vireo", "Wren", "Xebec",
)  # fmt: skip
SHAPES = ("circle", "triangle", "square", "diamond", "star", "cross", "ring", "hexagon")
EMBLEM_COLOURS = (
    (220, 30, 30),
    (30, 90, 230),
    (245, 205, 20),
    (30, 170, 60),
    (165, 40, 205),
    (250, 125, 20),
)
MAX_CLASSES = len(SHAPES) * len(EMBLEM_COLOURS)


@dataclass(frozen=True)
class DemoSpec:
    """What `data demo` writes."""

    classes: int = 8
    per_class: int = 60  # images per class, split 70/15/15 over train/val/test
    size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= MAX_CLASSES:
            raise UserError(f"--classes must be in [2, {MAX_CLASSES}], got {self.classes}")
        if self.per_class < 10:
            raise UserError(
                f"--per-class must be >= 10 (each split needs images), got {self.per_class}"
            )
        if not 32 <= self.size <= 1024:
            raise UserError(f"--size must be in [32, 1024], got {self.size}")


def brand_name(index: int) -> str:
    base = BRANDS[index % len(BRANDS)]
    return base if index < len(BRANDS) else f"{base} {index // len(BRANDS) + 1}"


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    corners = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}[shape]
    turn = {"triangle": -math.pi / 2, "square": math.pi / 4, "diamond": 0.0, "hexagon": 0.0}[shape]
    return [
        (
            cx + r * math.cos(turn + 2 * math.pi * k / corners),
            cy + r * math.sin(turn + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def _emblem(
    draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, ...], cx: float, cy: float, r: float
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.45)))
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    elif shape == "star":
        points = [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + math.pi * k / 5),
             cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + math.pi * k / 5))
            for k in range(10)
        ]  # fmt: skip
        draw.polygon(points, fill=colour)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=colour)


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    # Scenery and paint are desaturated so that brand colours are a cue, not noise.
    grey = rng.integers(40, 216)
    r, g, b = (0.35 * rng.integers(0, 256, 3) + 0.65 * grey).astype(int)
    return int(r), int(g), int(b)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    top, bottom = np.array(_muted(rng)), np.array(_muted(rng))
    t = np.linspace(0, 1, size)[:, None, None]
    pixels = (top * (1 - t) + bottom * t) * np.ones((1, size, 1))
    pixels += rng.normal(0, 12, (size, size, 3))
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):  # buildings, signs, other clutter
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 10, size // 3, 2)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=_muted(rng))
    return img


def draw_car(rng: np.random.Generator, brand: int, size: int) -> Image.Image:
    """One photo-like image of a car of class `brand`."""
    big = size * 2  # draw at 2× and downsample, for smooth edges
    img = _background(rng, big)
    draw = ImageDraw.Draw(img)
    shape = SHAPES[brand % len(SHAPES)]
    colour = EMBLEM_COLOURS[(brand // len(SHAPES) + brand) % len(EMBLEM_COLOURS)]
    style = brand % 4  # body style: cabin length and roof height
    width = big * rng.uniform(0.55, 0.85)
    height = width * (0.32 + 0.05 * (style % 2))
    x0 = rng.uniform(0, big - width)
    y0 = rng.uniform(big * 0.3, big - height * 1.2)
    body = _muted(rng)
    draw.rounded_rectangle((x0, y0, x0 + width, y0 + height), radius=height * 0.25, fill=body)
    cabin_start = x0 + width * (0.15 + 0.1 * (style // 2))
    cabin_end = x0 + width * (0.7 + 0.12 * (style % 2))
    roof = y0 - height * (0.55 + 0.2 * (style // 2))
    draw.polygon(
        [
            (cabin_start, y0),
            (cabin_start + width * 0.12, roof),
            (cabin_end - width * 0.08, roof),
            (cabin_end, y0),
        ],
        fill=body,
    )
    glass = (150, 190, 215)
    draw.polygon(
        [(cabin_start + width * 0.05, y0 - 2), (cabin_start + width * 0.14, roof + height * 0.1),
         (cabin_end - width * 0.1, roof + height * 0.1), (cabin_end - width * 0.04, y0 - 2)],
        fill=glass,
    )  # fmt: skip
    wheel = height * 0.32
    for wx in (x0 + width * 0.2, x0 + width * 0.8):
        draw.ellipse(
            (wx - wheel, y0 + height - wheel, wx + wheel, y0 + height + wheel), fill=(25, 25, 25)
        )
    # Grille at the front (right side; the image may be flipped below) with the brand's pattern.
    gx0, gx1 = x0 + width * 0.86, x0 + width * 0.99
    gy0, gy1 = y0 + height * 0.2, y0 + height * 0.75
    draw.rectangle((gx0, gy0, gx1, gy1), fill=(40, 40, 40))
    pattern = (brand // 2) % 3
    for k in range(1, 5):
        if pattern in (0, 2):
            y = gy0 + (gy1 - gy0) * k / 5
            draw.line((gx0, y, gx1, y), fill=(200, 200, 200), width=2)
        if pattern in (1, 2):
            x = gx0 + (gx1 - gx0) * k / 5
            draw.line((x, gy0, x, gy1), fill=(200, 200, 200), width=2)
    _emblem(draw, shape, colour, x0 + width * 0.55, y0 + height * 0.45, height * 0.42)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    shear = rng.uniform(-0.15, 0.15)
    img = img.transform(
        img.size,
        Image.Transform.AFFINE,
        (1, shear, -shear * big / 2, 0, 1, 0),
        Image.Resampling.BILINEAR,
    )
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def write_demo(root: Path, spec: DemoSpec) -> tuple[dict[str, int], bool]:
    """Write train/val/test brand folders of JPEGs under `root`.

    Returns images per split and whether they were written now (False: the same demo was
    already there, so running the README's first command twice is harmless).
    """
    root = Path(root)
    marker = root / "demo.json"
    n_eval = max(2, round(spec.per_class * 0.15))
    counts = {"train": spec.per_class - 2 * n_eval, "val": n_eval, "test": n_eval}
    totals = {split: count * spec.classes for split, count in counts.items()}
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return totals, False
    refuse_non_empty(root, "demo data folder")
    rng = np.random.default_rng(spec.seed)
    for brand in range(spec.classes):
        for split, count in counts.items():
            folder = root / split / brand_name(brand)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_car(rng, brand, spec.size).save(folder / f"{i:05d}.jpg", quality=90)
    marker.write_text(json.dumps(asdict(spec)))
    return totals, True
