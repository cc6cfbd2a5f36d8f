"""Labelled images (one folder per class) and what they can show about a drop in accuracy.

``runtimes.evaluate`` reads accuracy from them; ``runtimes.tune --labelled`` compares a
candidate with the fp32 model image by image, as a paired comparison: only the images
where one is right and the other wrong carry information, and a bound at 95% on the drop
says how large a drop the number of images could hide.
"""

from __future__ import annotations

import math
from pathlib import Path

from runtimes.errors import ImageError, ModelSpecError

CONFIDENCE = 0.95


def labelled_files(data: Path, labels: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, class index) for every image under ``data/<label>/``, sorted; folders must be labels."""
    from runtimes.preprocess import find_images

    if not data.is_dir():
        raise ImageError(f"{data} is not a folder; give one subfolder per class, named as the model's labels")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in labels]
    if unknown or not folders:
        shown = ", ".join(unknown[:5]) or "none"
        raise ModelSpecError(
            f"{data}: class folders must be named as the model's labels; not labels: {shown} "
            f"(the model has {len(labels)} labels, e.g. {', '.join(labels[:3])})"
        )
    found = []
    for folder in folders:
        index = labels.index(folder.name)
        found += [(p, index) for p in find_images(folder)]
    return found


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (no overflow for large n)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return min(1.0, sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k + 1)
    ))


def binomial_upper(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson: the largest rate p at which seeing ``k`` or fewer of ``n`` still has probability ``alpha``."""
    if k >= n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _binomial_cdf(k, n, mid) > alpha else (low, mid)
    return high


def binomial_lower(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson: the smallest rate p at which seeing ``k`` or more of ``n`` still has probability ``alpha``."""
    return 0.0 if k <= 0 else 1.0 - binomial_upper(n - k, n, alpha)


def drop_bound(lost: int, gained: int, images: int, confidence: float = CONFIDENCE) -> float:
    """An upper bound, at ``confidence``, on the drop in top-1 (a fraction) of a candidate
    against the reference: ``lost`` images the reference got right and the candidate
    wrong, ``gained`` the other way round, of ``images``. The rate of losses at most its
    upper bound, less the rate of gains at least its lower bound, each at half the
    error (Bonferroni), so the bound holds jointly."""
    alpha = (1 - confidence) / 2
    return binomial_upper(lost, images, alpha) - binomial_lower(gained, images, alpha)


def detectable_drop(images: int, confidence: float = CONFIDENCE) -> float:
    """The smallest drop ``images`` images can bound: the bound when no image differs."""
    return drop_bound(0, 0, images, confidence)


def images_needed(drop: float, confidence: float = CONFIDENCE) -> int:
    """How many images it takes before no difference at all bounds the drop below ``drop``."""
    alpha = (1 - confidence) / 2
    return math.ceil(math.log(alpha) / math.log1p(-drop)) if 0 < drop < 1 else 1
