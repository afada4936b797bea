"""Who a synthetic person is: body, skin, hair, clothes, patterns and accessories.

A :class:`Person` is a frozen bag of attributes drawn once per identity. Colours come from a small
clothing palette so that many people share colours; a share of people are *near twins* of an
earlier person (same clothing colours, different details), the hard negatives of the world.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: Clothing palette (RGB). Small on purpose: colours repeat across identities.
CLOTHING = np.array([
    (25, 25, 28), (235, 235, 230), (128, 128, 132), (30, 40, 90), (50, 90, 180),
    (140, 180, 220), (190, 35, 35), (110, 25, 35), (40, 120, 60), (110, 110, 50),
    (225, 200, 50), (230, 120, 30), (230, 150, 180), (110, 60, 140), (100, 65, 40),
    (215, 195, 160), (170, 150, 100), (30, 130, 130),
], dtype=np.int16)
SKIN = np.array([(250, 215, 185), (230, 185, 150), (200, 150, 110), (160, 110, 75),
                 (110, 75, 50), (80, 55, 40)], dtype=np.int16)
HAIR = np.array([(20, 18, 16), (60, 40, 25), (110, 75, 40), (190, 160, 100), (150, 150, 150),
                 (120, 40, 20)], dtype=np.int16)

PATTERNS = ("plain", "stripes", "two_tone", "logo")
LOWER_KINDS = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "bald")
LOGO_SHAPES = ("circle", "square", "triangle")


def _rgb(value) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(value, 0, 255))


@dataclass(frozen=True)
class Person:
    """Appearance of one identity. Lengths are fractions of the person's height."""

    height: float          # 0.88..1.0 of the standing box
    build: float           # 0.8..1.25 width factor
    head: float            # 0.9..1.15 head size factor
    skin: tuple
    hair: tuple
    hair_style: str
    upper: tuple
    upper_pattern: str
    pattern_colour: tuple  # stripes / second tone / logo colour
    logo_shape: str
    long_sleeves: bool
    lower: tuple
    lower_kind: str
    shoes: tuple
    backpack: tuple | None
    bag: tuple | None      # shoulder bag colour
    bag_side: int          # -1 left, +1 right (in the person's own frame)
    hat: tuple | None
    twin_of: int = -1      # index of the person whose colours this one copies, -1 if none


def _jitter(rng: np.random.Generator, colour, amount: float) -> tuple:
    return _rgb(np.asarray(colour) + rng.normal(0.0, amount, 3))


def _colour(rng: np.random.Generator) -> tuple:
    return _jitter(rng, CLOTHING[rng.integers(len(CLOTHING))], 10.0)


def sample_person(rng: np.random.Generator) -> Person:
    """Draw one independent person."""
    pattern = PATTERNS[rng.choice(4, p=[0.45, 0.2, 0.15, 0.2])]
    upper = _colour(rng)
    second = _colour(rng)
    while sum(abs(a - b) for a, b in zip(upper, second)) < 90:  # patterns must be visible
        second = _colour(rng)
    return Person(
        height=float(rng.uniform(0.88, 1.0)),
        build=float(rng.uniform(0.8, 1.25)),
        head=float(rng.uniform(0.9, 1.15)),
        skin=_jitter(rng, SKIN[rng.integers(len(SKIN))], 6.0),
        hair=_jitter(rng, HAIR[rng.integers(len(HAIR))], 6.0),
        hair_style=HAIR_STYLES[rng.choice(3, p=[0.55, 0.35, 0.1])],
        upper=upper,
        upper_pattern=pattern,
        pattern_colour=second,
        logo_shape=LOGO_SHAPES[rng.integers(3)],
        long_sleeves=bool(rng.random() < 0.5),
        lower=_colour(rng),
        lower_kind=LOWER_KINDS[rng.choice(3, p=[0.65, 0.2, 0.15])],
        shoes=_rgb(CLOTHING[rng.choice([0, 1, 2, 14, 3])] + rng.normal(0, 8, 3)),
        backpack=_colour(rng) if rng.random() < 0.3 else None,
        bag=_colour(rng) if rng.random() < 0.2 else None,
        bag_side=int(rng.choice([-1, 1])),
        hat=_colour(rng) if rng.random() < 0.15 else None,
    )


def near_twin(rng: np.random.Generator, original: Person, index: int) -> Person:
    """Same clothing colours as ``original`` (slightly shifted), different details."""
    fresh = sample_person(rng)
    pattern = PATTERNS[(PATTERNS.index(original.upper_pattern) + rng.integers(1, 4)) % 4]
    return replace(
        fresh,
        upper=_jitter(rng, original.upper, 5.0),
        lower=_jitter(rng, original.lower, 5.0),
        lower_kind=original.lower_kind,
        upper_pattern=pattern,
        backpack=None if original.backpack is not None else fresh.backpack or _colour(rng),
        twin_of=index,
    )


def sample_people(rng: np.random.Generator, n: int, twin_share: float = 0.25) -> list[Person]:
    """Draw ``n`` people; about ``twin_share`` of them are near twins of an earlier person."""
    people: list[Person] = []
    for i in range(n):
        if i > 0 and rng.random() < twin_share:
            j = int(rng.integers(i))
            people.append(near_twin(rng, people[j], j))
        else:
            people.append(sample_person(rng))
    return people
