"""Stratified selection of image positions: hold-out, validation/shots, subsamples.

Every function works on label arrays and returns sorted ``int64`` positions,
drawing randomness only from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np

from lqf.errors import LqfError

# Fraction of images held out as the test set for sources without one.
TEST_FRACTION = 0.2
# Seed of every seed-independent selection (hold-out test set, test subsample).
FIXED_SEED = 0


def _per_class(labels: np.ndarray, index: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Split ``index`` by the label of each position, keeping the order."""
    own = labels[index]
    return [index[own == k] for k in range(num_classes)]


def holdout_split(
    labels: np.ndarray,
    *,
    test_fraction: float = TEST_FRACTION,
    seed: int = FIXED_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Split all positions into stratified train and test parts.

    Each class with ``n >= 2`` images gives ``round(n * test_fraction)``
    of them (at least 1, at most ``n - 1``) to the test part; a class with
    a single image stays in train.

    Parameters
    ----------
    labels : np.ndarray
        ``int64``, shape ``(N,)``.

    Returns
    -------
    train, test : np.ndarray
        Sorted disjoint positions covering ``range(N)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    train, test = [], []
    for members in _per_class(labels, np.arange(len(labels)), num_classes):
        n = len(members)
        n_test = 0 if n < 2 else min(max(int(np.floor(n * test_fraction + 0.5)), 1), n - 1)
        perm = rng.permutation(members)
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    return _sorted(train), _sorted(test)


def stratified_subsample(
    labels: np.ndarray, index: np.ndarray, size: int, *, seed: int = FIXED_SEED
) -> np.ndarray:
    """Keep ``size`` of the positions ``index``, class proportions preserved.

    Per-class counts follow the largest-remainder rule, so they sum to
    exactly ``size``. Returns ``index`` itself when ``size >= len(index)``.
    """
    index = np.asarray(index, dtype=np.int64)
    if size >= len(index):
        return index
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels[index].max()) + 1
    groups = _per_class(labels, index, num_classes)
    counts = np.array([len(g) for g in groups], dtype=np.float64)
    quota = counts * size / counts.sum()
    take = np.floor(quota).astype(np.int64)
    # Hand out the remaining places to the largest fractional parts (ties: class order).
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(g)[:t] for g, t in zip(groups, take, strict=True)]
    return _sorted(chosen)


def draw_val_and_train(
    labels: np.ndarray,
    pool: np.ndarray,
    classes: list[str],
    *,
    val_per_class: int,
    shots: int | None,
    seed: int,
    extra_val: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the validation set and the (few-shot) train set from a train pool.

    Per class, one permutation of its pool positions is drawn with ``seed``:
    the first ``val_per_class`` become validation, the next ``shots`` (or all
    the rest when ``shots`` is None) become train. Hence, for one seed, the
    validation set does not depend on ``shots`` and smaller shot counts give
    subsets of larger ones. ``extra_val`` more per class, the ones after the
    train images in that permutation, are added to validation: a larger
    validation set beside the same train set (it needs ``shots``).

    Parameters
    ----------
    labels : np.ndarray
        ``int64`` labels of the whole source array.
    pool : np.ndarray
        Positions that may be used for validation and training.
    classes : list[str]
        Class names, for error messages.

    Returns
    -------
    val, train : np.ndarray
        Sorted disjoint subsets of ``pool``.

    Raises
    ------
    LqfError
        When a class has fewer than ``val_per_class`` (+ ``shots`` + ``extra_val``)
        images, or ``extra_val`` is asked for without ``shots``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = _per_class(labels, np.asarray(pool, dtype=np.int64), len(classes))
    sizes = np.array([len(g) for g in groups])
    if len(sizes) and sizes.min() < val_per_class:
        k = int(sizes.argmin())
        raise LqfError(
            f"--val-per-class {val_per_class} is more than class '{classes[k]}' has in "
            f"its training pool ({sizes[k]} images); lower --val-per-class"
        )
    if shots is not None:
        left = sizes - val_per_class
        if len(left) and left.min() < shots:
            k = int(left.argmin())
            raise LqfError(
                f"--shots {shots} is more than the smallest class '{classes[k]}' has "
                f"left after {val_per_class} validation images per class "
                f"({left[k]} images); lower --shots or --val-per-class"
            )
    if extra_val:
        if shots is None:
            raise LqfError(
                "more validation images need a run fitted with --shots: without it every pool "
                "image is in training; drop --extra-val"
            )
        left = sizes - val_per_class - shots
        if len(left) and left.min() < extra_val:
            k = int(left.argmin())
            raise LqfError(
                f"--extra-val {extra_val} is more than class '{classes[k]}' has left after its "
                f"validation and training images ({left[k]} images); lower --extra-val"
            )
    rng = np.random.default_rng(seed)
    val, train = [], []
    for members in groups:
        perm = rng.permutation(members)
        val.append(perm[:val_per_class])
        rest = perm[val_per_class:]
        train.append(rest if shots is None else rest[:shots])
        if extra_val:
            val.append(rest[shots : shots + extra_val])
    return _sorted(val), _sorted(train)


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64)
