"""Drawing a :class:`~cion.data.synth.appearance.Person` onto a PIL image.

Viewpoints show different details, as real pedestrians do: a logo only from the front, a
backpack fully from behind, as a bulge from the side and as two straps from the front; a
two-tone shirt shows one colour from each side; a shoulder bag only from the side it hangs on.
The walking phase moves arms and legs (strongly from the side, slightly from the front/back).

Geometry is in *person units*: ``Y`` from 0 (top of the head) to 1 (soles), ``X`` relative to
the body's centre line, both scaled by the person's height in pixels.
"""
from __future__ import annotations

import math

from PIL import ImageDraw

from cion.data.synth.appearance import Person

VIEWS = ("front", "back", "left", "right")


class _Canvas:
    """Maps person units to pixels for one drawing."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, height: float):
        self.draw, self.cx, self.top, self.h = draw, cx, top, height

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.h, self.top + y * self.h)

    def poly(self, points, colour) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in points], fill=colour)

    def ellipse(self, x: float, y: float, rx: float, ry: float, colour) -> None:
        (x0, y0), (x1, y1) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        self.draw.ellipse([x0, y0, x1, y1], fill=colour)

    def limb(self, a, b, width: float, colour) -> None:
        """A thick segment from a to b (person units)."""
        dx, dy = b[0] - a[0], b[1] - a[1]
        norm = math.hypot(dx, dy) or 1.0
        px, py = -dy / norm * width / 2, dx / norm * width / 2
        self.poly([(a[0] + px, a[1] + py), (b[0] + px, b[1] + py),
                   (b[0] - px, b[1] - py), (a[0] - px, a[1] - py)], colour)


def _shade(colour, factor: float):
    return tuple(max(0, min(255, int(c * factor))) for c in colour)


def _legs(cv: _Canvas, p: Person, view: str, phase: float, hip_y: float) -> None:
    """Legs, lower clothing and shoes."""
    s = math.sin(phase)
    leg_w = 0.085 * p.build
    cover_to = {"trousers": 0.95, "shorts": 0.68, "skirt": 0.70}[p.lower_kind]
    if view in ("left", "right"):
        d = 1 if view == "right" else -1
        swings = [(-0.42 * s, 0.8), (0.42 * s, 1.0)]  # (angle, shade): far leg darker
        for angle, shade in swings:
            foot = (math.sin(angle) * 0.46 * d, hip_y + math.cos(angle) * 0.46)
            hip = (0.0, hip_y)
            t = (cover_to - hip_y) / (foot[1] - hip_y)
            cover = (hip[0] + (foot[0] - hip[0]) * t, hip[1] + (foot[1] - hip[1]) * t)
            cv.limb(hip, foot, leg_w * 0.9, _shade(p.skin, shade))
            cv.limb(hip, cover if p.lower_kind != "trousers" else foot, leg_w,
                    _shade(p.lower, shade))
            cv.poly([(foot[0] - 0.04, foot[1] - 0.03), (foot[0] + 0.06 * d, foot[1] - 0.02),
                     (foot[0] + 0.06 * d, foot[1] + 0.02), (foot[0] - 0.04, foot[1] + 0.02)],
                    _shade(p.shoes, shade))
    else:
        spread = 0.055 * p.build
        for side in (-1, 1):
            lift = 0.025 * max(0.0, s * side)
            foot_y = 0.965 - lift
            x = side * (spread + 0.01 * s * side)
            cv.limb((side * spread, hip_y), (x, foot_y), leg_w * 0.9, p.skin)
            end = foot_y if p.lower_kind == "trousers" else cover_to
            cv.limb((side * spread, hip_y), (x, end), leg_w, p.lower)
            cv.poly([(x - 0.045, foot_y - 0.02), (x + 0.045, foot_y - 0.02),
                     (x + 0.045, foot_y + 0.02), (x - 0.045, foot_y + 0.02)], p.shoes)
    if p.lower_kind == "skirt":
        w = (0.12 if view in ("front", "back") else 0.09) * p.build
        cv.poly([(-w * 0.85, hip_y - 0.02), (w * 0.85, hip_y - 0.02), (w * 1.35, cover_to),
                 (-w * 1.35, cover_to)], p.lower)


def _arm(cv: _Canvas, p: Person, shoulder, hand, shade: float) -> None:
    cv.limb(shoulder, hand, 0.05, _shade(p.skin, shade))
    if p.long_sleeves:
        end = (shoulder[0] + (hand[0] - shoulder[0]) * 0.88, shoulder[1] + (hand[1] - shoulder[1]) * 0.88)
    else:
        end = (shoulder[0] + (hand[0] - shoulder[0]) * 0.4, shoulder[1] + (hand[1] - shoulder[1]) * 0.4)
    cv.limb(shoulder, end, 0.058, _shade(p.upper, shade))


def _torso_colours(p: Person, view: str):
    """(left-of-image colour, right-of-image colour) of the shirt for a viewpoint."""
    if p.upper_pattern != "two_tone":
        return p.upper, p.upper
    own_right, own_left = p.upper, p.pattern_colour
    return {"front": (own_right, own_left), "back": (own_left, own_right),
            "right": (own_right, own_right), "left": (own_left, own_left)}[view]


def _torso(cv: _Canvas, p: Person, view: str, top: float, hip: float) -> None:
    side = view in ("left", "right")
    sw = (0.08 if side else 0.13) * p.build
    ww = (0.075 if side else 0.105) * p.build
    left_c, right_c = _torso_colours(p, view)
    cv.poly([(-sw, top), (0, top), (0, hip), (-ww, hip)], left_c)
    cv.poly([(0, top), (sw, top), (ww, hip), (0, hip)], right_c)
    if p.upper_pattern == "stripes":
        n = 4
        for k in range(n):
            y = top + (hip - top) * (k + 0.6) / (n + 0.4)
            w = sw + (ww - sw) * (y - top) / (hip - top)
            cv.poly([(-w, y), (w, y), (w, y + 0.028), (-w, y + 0.028)], p.pattern_colour)
    if p.upper_pattern == "logo" and view == "front":
        y, r = top + 0.1, 0.035
        if p.logo_shape == "circle":
            cv.ellipse(0.0, y, r, r, p.pattern_colour)
        elif p.logo_shape == "square":
            cv.poly([(-r, y - r), (r, y - r), (r, y + r), (-r, y + r)], p.pattern_colour)
        else:
            cv.poly([(0, y - r * 1.2), (r * 1.2, y + r), (-r * 1.2, y + r)], p.pattern_colour)


def _backpack(cv: _Canvas, p: Person, view: str, top: float, hip: float, behind: bool) -> None:
    if p.backpack is None:
        return
    if view == "back" and not behind:
        w = 0.095 * p.build
        cv.poly([(-w, top + 0.03), (w, top + 0.03), (w * 1.05, hip - 0.06), (-w * 1.05, hip - 0.06)],
                p.backpack)
    elif view == "front" and not behind:
        for side in (-1, 1):
            x = side * 0.075 * p.build
            cv.limb((x, top), (x * 0.9, top + 0.2), 0.022, _shade(p.backpack, 0.8))
    elif view in ("left", "right") and behind:
        d = 1 if view == "right" else -1
        x0 = -d * 0.065 * p.build
        x1 = -d * 0.16 * p.build
        cv.poly([(x0, top + 0.03), (x1, top + 0.04), (x1, hip - 0.07), (x0, hip - 0.06)], p.backpack)


def _bag(cv: _Canvas, p: Person, view: str, top: float, hip: float) -> None:
    if p.bag is None:
        return
    # image-side of the bag: person's right is image-left from the front, image-right from behind
    if view == "front":
        x = -p.bag_side * 0.17 * p.build
    elif view == "back":
        x = p.bag_side * 0.17 * p.build
    else:
        visible = (view == "right") == (p.bag_side == 1)
        if not visible:
            return
        x = 0.0
    cv.limb((-x * 0.6 if view in ("front", "back") else 0.0, top), (x, hip - 0.02), 0.015,
            _shade(p.bag, 0.7))
    cv.poly([(x - 0.05, hip - 0.06), (x + 0.05, hip - 0.06), (x + 0.05, hip + 0.05),
             (x - 0.05, hip + 0.05)], p.bag)


def _head(cv: _Canvas, p: Person, view: str) -> None:
    hy, ry = 0.075, 0.066 * p.head
    rx = (0.05 if view in ("front", "back") else 0.056) * p.head
    cv.limb((0.0, 0.12), (0.0, 0.17), 0.045, p.skin)  # neck
    if p.hair_style == "long":
        cv.poly([(-rx * 1.05, hy), (rx * 1.05, hy), (rx * 1.1, 0.23), (-rx * 1.1, 0.23)]
                if view != "front" else
                [(-rx * 1.15, hy), (-rx * 0.7, hy), (-rx * 0.8, 0.21), (-rx * 1.2, 0.21)],
                p.hair)
        if view == "front":
            cv.poly([(rx * 0.7, hy), (rx * 1.15, hy), (rx * 1.2, 0.21), (rx * 0.8, 0.21)], p.hair)
    cv.ellipse(0.0, hy, rx, ry, p.skin)
    if p.hair_style != "bald":
        if view == "back":
            cv.ellipse(0.0, hy - 0.005, rx * 1.04, ry * 1.02, p.hair)
        elif view == "front":
            cv.poly([(-rx * 1.02, hy - 0.01), (-rx * 0.9, hy - ry * 0.8), (0, hy - ry * 1.05),
                     (rx * 0.9, hy - ry * 0.8), (rx * 1.02, hy - 0.01), (0, hy - ry * 0.55)], p.hair)
        else:
            d = 1 if view == "right" else -1
            cv.poly([(-d * rx * 1.04, hy + ry * 0.4), (-d * rx, hy - ry * 0.6), (0, hy - ry * 1.05),
                     (d * rx * 0.7, hy - ry * 0.7), (d * rx * 0.2, hy - ry * 0.35),
                     (-d * rx * 0.2, hy + ry * 0.3)], p.hair)
    if p.hat is not None:
        cv.poly([(-rx * 1.05, hy - ry * 0.35), (rx * 1.05, hy - ry * 0.35),
                 (rx * 0.85, hy - ry * 1.15), (-rx * 0.85, hy - ry * 1.15)], p.hat)
        brim = rx * (1.5 if view in ("left", "right") else 1.25)
        off = (0.3 * rx if view == "right" else -0.3 * rx if view == "left" else 0.0)
        cv.poly([(off - brim, hy - ry * 0.42), (off + brim, hy - ry * 0.42),
                 (off + brim, hy - ry * 0.3), (off - brim, hy - ry * 0.3)], _shade(p.hat, 0.8))


def draw_person(draw: ImageDraw.ImageDraw, person: Person, view: str, phase: float,
                cx: float, top: float, height: float) -> None:
    """Draw ``person`` seen from ``view`` at walking ``phase`` (radians).

    Args:
        draw: PIL drawing context of an RGB image.
        view: one of :data:`VIEWS`.
        cx: x of the body's centre line, pixels. top: y of the top of the head, pixels.
        height: person's height in pixels (before ``person.height`` scaling).
    """
    h = height * person.height
    cv = _Canvas(draw, cx, top + (height - h), h)
    top_y, hip_y = 0.16, 0.50
    s = math.sin(phase)
    side = view in ("left", "right")
    _backpack(cv, person, view, top_y, hip_y, behind=True)
    if side:
        d = 1 if view == "right" else -1
        shoulder = (0.0, top_y + 0.02)
        far_hand = (-math.sin(0.5 * s) * 0.32 * d, top_y + 0.02 + math.cos(0.5 * s) * 0.32)
        _arm(cv, person, shoulder, far_hand, 0.75)
        _legs(cv, person, view, phase, hip_y)
        _torso(cv, person, view, top_y, hip_y)
        _bag(cv, person, view, top_y, hip_y)
        near_hand = (math.sin(0.5 * s) * 0.32 * d, top_y + 0.02 + math.cos(0.5 * s) * 0.32)
        _arm(cv, person, shoulder, near_hand, 1.0)
    else:
        _legs(cv, person, view, phase, hip_y)
        for sgn in (-1, 1):
            sh = (sgn * 0.14 * person.build, top_y + 0.02)
            hand = (sgn * 0.17 * person.build, 0.49 - 0.015 * s * sgn)
            _arm(cv, person, sh, hand, 0.95)
        _torso(cv, person, view, top_y, hip_y)
        _backpack(cv, person, view, top_y, hip_y, behind=False)
        _bag(cv, person, view, top_y, hip_y)
    _head(cv, person, view)
