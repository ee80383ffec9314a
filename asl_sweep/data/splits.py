"""Which image serves where, as index arrays (numpy, no pixels): the three-way split into
train, validation and test, person-disjoint when images have groups and stratified by class
otherwise; the validation folds that confirmation repeats use; covering subsets.

The test indices are kept apart here and nowhere else: every fold re-splits train and
validation only."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asl_sweep.runtime.errors import DataError

GROUP_ATTEMPTS = 200  # seeded shuffles tried to find a grouped split that covers every class


@dataclass(frozen=True)
class Splits:
    train: np.ndarray  # global image indices, sorted
    val: np.ndarray
    test: np.ndarray
    folds: tuple[np.ndarray, ...]  # validation indices per fold; folds[0] is `val`
    grouped: bool

    @property
    def pool(self) -> np.ndarray:
        """Every image the search may see: train and validation, never test."""
        return np.union1d(self.train, self.val)

    def fold(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) of fold k (taken modulo the number of folds); fold 0 is the study's
        own split."""
        val = self.folds[k % len(self.folds)]
        return np.setdiff1d(self.pool, val), val


MATCH_SECONDS = 10.0  # every file name matched within this: plain patterns take milliseconds


class _TooSlow(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """Raise _TooSlow after `seconds` (a timer signal; CPython's regex engine checks signals
    as it backtracks). Only the main thread can take signals: elsewhere, no limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):  # noqa: ARG001
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Ways file names commonly name a person: anna_A_01.jpg, anna-A-01.jpg, A/anna/01.jpg.
PERSON_PATTERNS = ("^([^_]+)_", "^([^-]+)-", "^([^/]+)/")


def person_pattern(names: Sequence[str]) -> tuple[str, int] | None:
    """A group_pattern the file names (CLASS/FILE, as an image set keeps them) look as if
    they follow, and how many people it finds; None where none does. A pattern fits where it
    matches every name, finds at least 3 groups, each with more than one image on average,
    and most groups have images in more than one class (a prefix found in one class only is
    the class's own naming, such as A_0001.jpg, not a person)."""
    for pattern in PERSON_PATTERNS:
        try:
            groups = groups_of(names, pattern)
        except DataError:
            continue
        classes: dict[str, set[str]] = {}
        for name, group in zip(names, groups, strict=True):
            classes.setdefault(group, set()).add(Path(name).parts[0])
        spread = sum(len(c) > 1 for c in classes.values())
        if 3 <= len(classes) <= len(names) // 2 and spread > len(classes) / 2:
            return pattern, len(classes)
    return None


def folders_swapped(names: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """Where the photos look kept as PERSON/CLASS/FILE (a folder per person at the top, each
    holding the same class folders) rather than CLASS/PERSON/FILE: every top folder holds
    the same two or more sub-folders, at most half as many as the top folders (more people
    than letters), and no file beside them. Then asl-sweep's classes are the people. (The
    top folders, the sub-folders), or None. A data set with many classes, each shot by the
    same few photographers, looks the same: said as a note, never refused."""
    below: dict[str, set[str]] = {}
    for name in names:
        parts = Path(name).parts
        if len(parts) < 3:
            return None
        below.setdefault(parts[0], set()).add(parts[1])
    sets = list(below.values())
    if any(s != sets[0] for s in sets) or not 2 <= len(sets[0]) <= len(sets) // 2:
        return None
    return sorted(below), sorted(sets[0])


def groups_of(names: Sequence[str], pattern: str, seconds: float = MATCH_SECONDS) -> list[str]:
    regex = re.compile(pattern)
    groups = []
    try:
        with _time_limit(seconds):
            for name in names:
                path = Path(name)
                match = regex.search(path.name)
                # Photos kept in a folder per person inside each class folder (A/anna/01.jpg):
                # where the file name does not match, its path below the class folder may.
                below = Path(*path.parts[1:]).as_posix() if len(path.parts) > 2 else None
                if (match is None or match.group(1) is None) and below is not None:
                    match = regex.search(below)
                if match is None or match.group(1) is None:
                    nor = f" nor its path below the class folder {below!r}" if below else ""
                    raise DataError(
                        f"{name}: data.group_pattern '{pattern}' does not match its file name "
                        f"{path.name!r}{nor}; it must match every file's name, group 1 naming "
                        "the person (e.g. '^([^_]+)_' for anna_A_01.jpg, or '^([^/]+)/' for "
                        "a folder per person, A/anna/01.jpg): fix the pattern, or drop it to "
                        "split by class")
                groups.append(match.group(1))
    except _TooSlow:
        raise DataError(f"data.group_pattern '{pattern}': matching {len(names)} file names took "
                        f"over {seconds:.0f} s (nested repetition such as (a+)+ backtracks "
                        "without end); write it without a repeat inside a repeat, e.g. "
                        "'^([^_]+)_'") from None
    return groups


def _counts(labels: np.ndarray, parts: dict[str, np.ndarray], c: int) -> str:
    return "/".join(str(int((labels[idx] == c).sum())) for idx in parts.values())


def _check_cover(labels: np.ndarray, classes: Sequence[str], parts: dict[str, np.ndarray],
                 advice: str) -> None:
    for name, idx in parts.items():
        if len(idx) == 0:
            raise DataError(f"data split: the {name} split is empty ({len(labels)} images); "
                            f"{advice}")
    for c, cls in enumerate(classes):
        for name, idx in parts.items():
            if not (labels[idx] == c).any():
                raise DataError(
                    f"data split: class {cls} has no image in the {name} split (train/val/test "
                    f"images of {cls}: {_counts(labels, parts, c)}); {advice}")


def make_splits(labels: np.ndarray, classes: Sequence[str], val_fraction: float,
                test_fraction: float, seed: int, groups: Sequence[str] | None = None,
                folds: bool = False) -> Splits:
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if groups is None:
        train, val, test = _stratified(labels, classes, val_fraction, test_fraction, rng)
    else:
        train, val, test = _grouped(labels, classes, np.asarray(groups), val_fraction,
                                    test_fraction, seed)
    fold_vals: list[np.ndarray] = [val]
    if folds or groups is not None:
        fold_vals += _more_folds(labels, train, val, None if groups is None else np.asarray(groups),
                                 rng)
    return Splits(train, val, test, tuple(fold_vals), groups is not None)


def _stratified(labels, classes, val_fraction, test_fraction, rng):
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        n_test = max(1, round(test_fraction * n))
        n_val = max(1, round(val_fraction * n))
        if n - n_test - n_val < 1:
            raise DataError(f"data split: class {cls} has {n} image(s), too few for train, "
                            f"validation and test (at least 3, with data.val_fraction "
                            f"{val_fraction} and data.test_fraction {test_fraction}); add images "
                            f"of {cls} or lower the fractions")
        parts["test"] += members[:n_test].tolist()
        parts["val"] += members[n_test:n_test + n_val].tolist()
        parts["train"] += members[n_test + n_val:].tolist()
    return tuple(np.sort(np.asarray(parts[k], dtype=np.int64)) for k in ("train", "val", "test"))


def _grouped(labels, classes, groups, val_fraction, test_fraction, seed):
    unique = np.unique(groups)
    advice = (f"{len(unique)} groups (people) share {len(labels)} images: more people, other "
              "data.val_fraction / data.test_fraction, or no data.group_pattern")
    if len(unique) < 3:
        raise DataError(f"data split: {len(unique)} group(s) cannot fill train, validation and "
                        f"test without a person on two sides; {advice}")
    for c, cls in enumerate(classes):  # a class few people hold cannot be on all three sides
        people = np.unique(groups[labels == c])
        if 0 < len(people) < 3:
            held = ", ".join(f"{p} ({int(((groups == p) & (labels == c)).sum())})"
                             for p in people[:2])
            raise DataError(f"data split: every image of class {cls} belongs to "
                            f"{'person' if len(people) == 1 else 'people'} {held}: a split by "
                            f"person cannot put {cls} in train, validation and test; add images "
                            f"of {cls} from at least 3 people, or drop data.group_pattern")
    first: dict[str, np.ndarray] | None = None
    for attempt in range(GROUP_ATTEMPTS):
        order = np.random.default_rng(seed + attempt).permutation(unique)
        sizes = np.array([(groups == g).sum() for g in order])
        cumulative = np.cumsum(sizes)
        n_test = int(np.searchsorted(cumulative, test_fraction * len(labels))) + 1
        n_val = int(np.searchsorted(cumulative[n_test:] - cumulative[n_test - 1],
                                    val_fraction * len(labels))) + 1
        if n_test + n_val >= len(order):
            n_val = max(1, len(order) - n_test - 1)
        test_g, val_g = order[:n_test], order[n_test:n_test + n_val]
        parts = {"train": np.flatnonzero(~np.isin(groups, np.concatenate([test_g, val_g]))),
                 "val": np.flatnonzero(np.isin(groups, val_g)),
                 "test": np.flatnonzero(np.isin(groups, test_g))}
        first = first or parts
        if all(len(np.unique(labels[idx])) == len(classes) for idx in parts.values()):
            return parts["train"], parts["val"], parts["test"]
    _check_cover(labels, classes, first, advice)  # names the class that is missing
    raise AssertionError("unreachable: a split that covers every class was rejected")


def _more_folds(labels, train, val, groups, rng) -> list[np.ndarray]:
    """Further validation folds carved out of `train`, each about the size of `val`, by
    group when there are groups and by class otherwise."""
    if groups is not None:
        order = rng.permutation(np.unique(groups[train]))
        chunks, current, size = [], [], 0
        for g in order:
            members = train[groups[train] == g]
            current.append(members)
            size += len(members)
            if size >= len(val):
                chunks.append(np.sort(np.concatenate(current)))
                current, size = [], 0
        return [c for c in chunks if len(np.setdiff1d(train, c))]
    per_class = []
    for c in np.unique(labels[val]):
        members = rng.permutation(train[labels[train] == c])
        k = int((labels[val] == c).sum())
        per_class.append([members[i * k:(i + 1) * k] for i in range(len(members) // k)])
    n = min(len(p) for p in per_class)
    folds = [np.sort(np.concatenate([p[i] for p in per_class])) for i in range(n)]
    # Keep at least one image of every class in training.
    return [f for f in folds if all((labels[np.setdiff1d(train, f)] == c).any()
                                    for c in np.unique(labels[val]))]


def covering_subset(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """N of the given indices covering every class present, taken round-robin by class."""
    indices = np.asarray(indices)
    y = np.asarray(labels)[indices]
    classes = np.unique(y)
    if n < len(classes):
        raise DataError(f"subset of {n} images cannot cover {len(classes)} classes")
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(indices[y == c])) for c in classes]
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return np.sort(np.asarray(chosen, dtype=np.int64))
