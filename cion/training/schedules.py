"""Training schedules as pure functions of training progress (in epochs, a float).

Every schedule of the DINO recipe (learning rate, weight decay, teacher momentum, teacher
temperature) is evaluated at ``progress = epoch + step / steps_in_epoch``. Nothing is
precomputed per iteration, so a schedule cannot drift when the number of steps per epoch changes
(the curriculum on images per identity changes it) and a resumed run needs no saved schedule
state: the config and the position are enough. (The authors' release precomputed per-iteration
arrays from the first epoch's length; after the curriculum changed the batch composition the
arrays no longer matched the epochs.)
"""
from __future__ import annotations

import math


def cosine(progress: float, total: float, start: float, end: float,
           warmup: float = 0.0, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``start`` over ``warmup`` epochs, then a
    half-cosine from ``start`` to ``end`` reached at ``total`` epochs (constant ``end`` after).

    Args:
        progress: epochs done so far (float, >= 0).
        total: length of the schedule in epochs.
    """
    if warmup > 0 and progress < warmup:
        return warmup_start + (start - warmup_start) * progress / warmup
    span = max(total - warmup, 1e-12)
    t = min(max((progress - warmup) / span, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def linear_then_constant(progress: float, warmup: float, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` epochs, then ``end``."""
    if warmup <= 0 or progress >= warmup:
        return end
    return start + (end - start) * progress / warmup


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """DINO's linear scaling rule: ``base_lr * global_batch / 256``."""
    return base_lr * global_batch / 256.0


def schedule_values(cfg, progress: float) -> dict[str, float]:
    """All scheduled values at ``progress`` (epochs) for a :class:`PretrainConfig`.

    Returns a dict with ``lr``, ``weight_decay``, ``momentum`` (teacher EMA) and
    ``teacher_temp``.
    """
    return {
        "lr": cosine(progress, cfg.epochs, scaled_lr(cfg.base_lr, cfg.batch_size), cfg.min_lr,
                     warmup=min(cfg.warmup_epochs, cfg.epochs), warmup_start=0.0),
        "weight_decay": cosine(progress, cfg.epochs, cfg.weight_decay, cfg.weight_decay_end),
        "momentum": cosine(progress, cfg.epochs, cfg.momentum_teacher, 1.0),
        "teacher_temp": linear_then_constant(progress, cfg.warmup_teacher_temp_epochs,
                                             cfg.warmup_teacher_temp, cfg.teacher_temp),
    }


def warmup_hold_cosine(progress: float, total: float, peak: float, end: float,
                       warmup: float = 0.0, warmup_factor: float = 0.01,
                       hold_until: float = 0.0) -> float:
    """Linear warm-up from ``peak * warmup_factor`` to ``peak`` over ``warmup`` epochs, constant
    ``peak`` until epoch ``hold_until``, then a half-cosine to ``end`` at ``total`` epochs.

    The supervised fine-tuning schedules (all in epochs, ``progress`` a float): BNNeck
    (warm-up, then cosine: ``hold_until <= warmup``) and MGN (10 warm-up epochs from 0.01x,
    constant to epoch 30, cosine to ~7.7e-7 at 60).
    """
    if warmup > 0 and progress < warmup:
        start = peak * warmup_factor
        return start + (peak - start) * progress / warmup
    begin = max(warmup, hold_until)
    if progress < begin:
        return peak
    span = max(total - begin, 1e-12)
    t = min(max((progress - begin) / span, 0.0), 1.0)
    return end + 0.5 * (peak - end) * (1.0 + math.cos(math.pi * t))


def warmup_step_decay(progress: float, peak: float, step_size: float, gamma: float = 0.1,
                      warmup: float = 0.0, warmup_factor: float = 0.01) -> float:
    """Linear warm-up as in :func:`warmup_hold_cosine`, then ``peak * gamma ** floor(epoch /
    step_size)`` (Cluster Contrast: x0.1 every 20 epochs). The decay counts whole epochs, so
    an epoch keeps one rate."""
    if warmup > 0 and progress < warmup:
        start = peak * warmup_factor
        return start + (peak - start) * progress / warmup
    return peak * gamma ** math.floor(progress / step_size + 1e-9)
