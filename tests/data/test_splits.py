"""Train / validation / test and the validation folds, as index arrays."""

import numpy as np
import pytest

from asl_sweep.data.splits import (
    covering_subset,
    folders_swapped,
    groups_of,
    make_splits,
    person_pattern,
)
from asl_sweep.runtime.errors import DataError

CLASSES = list("ABC")


def people(n_people=10, per_letter=4):
    names = [f"p{p}_{c}_{n}.jpg" for p in range(n_people) for c in CLASSES for n in range(per_letter)]
    labels = np.array([CLASSES.index(n.split("_")[1]) for n in names])
    return names, labels, groups_of(names, r"^([^_]+)_")


def test_stratified_three_way_split_is_disjoint_deterministic_and_covers_every_class():
    labels = np.repeat(np.arange(3), 40)
    a = make_splits(labels, CLASSES, 0.15, 0.15, seed=3)
    b = make_splits(labels, CLASSES, 0.15, 0.15, seed=3)
    c = make_splits(labels, CLASSES, 0.15, 0.15, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test),
                                                    strict=True))
    assert not np.array_equal(a.test, c.test)
    parts = [set(a.train), set(a.val), set(a.test)]
    assert sum(map(len, parts)) == 120 and not (parts[0] & parts[1] or parts[0] & parts[2]
                                                or parts[1] & parts[2])
    assert np.bincount(labels[a.test]).tolist() == [6, 6, 6]


def test_grouped_split_keeps_each_person_on_one_side_of_all_three():
    names, labels, groups = people()
    s = make_splits(labels, CLASSES, 0.2, 0.2, seed=0, groups=groups)
    g = np.asarray(groups)
    sides = [set(g[idx]) for idx in (s.train, s.val, s.test)]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert s.grouped and len(s.folds) >= 2


def test_folds_are_person_disjoint_the_same_size_and_never_touch_test():
    names, labels, groups = people(20)
    s = make_splits(labels, CLASSES, 0.15, 0.15, seed=1, groups=groups)
    g = np.asarray(groups)
    assert np.array_equal(s.fold(0)[1], s.val)
    for k in range(len(s.folds)):
        train, val = s.fold(k)
        assert not set(train) & set(s.test) and not set(val) & set(s.test)
        assert not set(g[train]) & set(g[val])  # nobody on both sides
        assert abs(len(val) - len(s.val)) <= 12  # about the validation split's size
        assert np.array_equal(np.union1d(train, val), s.pool)
    assert len({tuple(f) for f in s.folds}) == len(s.folds)


def test_stratified_folds_when_asked():
    labels = np.repeat(np.arange(3), 40)
    s = make_splits(labels, CLASSES, 0.15, 0.15, seed=0, folds=True)
    assert len(s.folds) >= 4
    for k in range(len(s.folds)):
        train, val = s.fold(k)
        assert np.bincount(labels[val]).tolist() == [6, 6, 6]
        assert not set(val) & set(s.test) and set(labels[train]) == {0, 1, 2}
    assert len(make_splits(labels, CLASSES, 0.15, 0.15, seed=0).folds) == 1


@pytest.mark.parametrize("per_class, message", [
    (1, "class A has 1 image"), (2, "class A has 2 image"),
])
def test_too_few_images_of_a_class_is_an_error_naming_it(per_class, message):
    labels = np.repeat(np.arange(3), per_class)
    with pytest.raises(DataError, match=message):
        make_splits(labels, CLASSES, 0.2, 0.2, seed=0)


def test_a_class_one_person_holds_names_the_class_and_the_person():
    """Issue 33: the line named another class's empty validation split; it names the class
    and the person that make a split by person impossible."""
    names, labels, groups = people(4)
    labels = labels.copy()
    only_p0 = np.asarray(groups) == "p0"
    labels[(labels == 2) & ~only_p0] = 1  # class C: signed by one person only
    with pytest.raises(DataError, match=r"every image of class C belongs to person p0 \(4\): "
                                        r"a split by person cannot put C in train, validation "
                                        r"and test; add images of C from at least 3 people"):
        make_splits(labels, CLASSES, 0.25, 0.25, seed=0, groups=groups)
    labels[(labels == 1) & (np.asarray(groups) == "p1")] = 2  # two people: still too few
    with pytest.raises(DataError, match=r"class C belongs to people p0 \(4\), p1 \(\d+\)"):
        make_splits(labels, CLASSES, 0.25, 0.25, seed=0, groups=groups)


def test_too_few_groups_is_an_error():
    names, labels, groups = people(2)
    with pytest.raises(DataError, match="2 group"):
        make_splits(labels, CLASSES, 0.2, 0.2, seed=0, groups=groups)


def test_group_pattern_that_misses_a_file_is_named():
    with pytest.raises(DataError, match="x.jpg: data.group_pattern"):
        groups_of(["p1_A_1.jpg", "x.jpg"], r"^(p\d+)_")


def test_covering_subset_has_every_class():
    labels = np.repeat(np.arange(9), 30)
    subset = covering_subset(np.arange(270), labels, 20, seed=0)
    assert len(subset) == 20 and set(labels[subset].tolist()) == set(range(9))
    with pytest.raises(DataError, match="cannot cover 9 classes"):
        covering_subset(np.arange(270), labels, 5, seed=0)


def test_a_pattern_that_backtracks_without_end_is_one_line_not_a_hang():
    import time

    names = ["a" * 40 + "!.png"]  # '^(a+)+$' needs about 2**40 steps to give up on this
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"data.group_pattern '\^\(a\+\)\+\$': matching 1 file"):
        groups_of(names, r"^(a+)+$", seconds=0.5)
    assert time.perf_counter() - started < 5
    assert groups_of(["p1_A_0.png"], r"^([^_]+)_") == ["p1"]  # and the timer is gone again


def test_a_file_the_pattern_does_not_match_is_named_with_what_the_pattern_sees():
    """The pattern is matched against the file's name, not its path under the root: the
    line shows that name and what to do."""
    with pytest.raises(DataError) as caught:
        groups_of(["p1_A_0.png", "A/A1008.jpg"], r"^(p\d)_")
    assert str(caught.value) == (
        "A/A1008.jpg: data.group_pattern '^(p\\d)_' does not match its file name 'A1008.jpg'; "
        "it must match every file's name, group 1 naming the person (e.g. '^([^_]+)_' for "
        "anna_A_01.jpg, or '^([^/]+)/' for a folder per person, A/anna/01.jpg): fix the "
        "pattern, or drop it to split by class")


def test_a_folder_per_person_inside_each_class_folder_names_the_person():
    """A/anna/01.jpg: the file name holds no person, the folder below the class does. A
    pattern for file names is unchanged there; one that matches neither names both."""
    names = ["A/anna/01.jpg", "A/ben/01.jpg", "B/anna/02.jpg", "B/ben/x_1.jpg"]
    assert groups_of(names, r"^([^/]+)/") == ["anna", "ben", "anna", "ben"]
    assert groups_of(["A/anna/p1_01.jpg", "B/p2_03.jpg"], r"^(p\d)_") == ["p1", "p2"]
    with pytest.raises(DataError) as caught:
        groups_of(names, r"^(p\d)_")
    assert ("A/anna/01.jpg: data.group_pattern '^(p\\d)_' does not match its file name "
            "'01.jpg' nor its path below the class folder 'anna/01.jpg';") in str(caught.value)


@pytest.mark.parametrize("names, found", [
    # anna_A_01.jpg: people before the first _, each in several classes
    ([f"{c}/{p}_{c}_{n}.jpg" for c in "ABC" for p in ("anna", "ben", "cleo") for n in (1, 2)],
     ("^([^_]+)_", 3)),
    ([f"{c}/{p}-{n}.png" for c in "AB" for p in ("p1", "p2", "p3", "p4") for n in (1, 2)],
     ("^([^-]+)-", 4)),
    # a folder per person inside each class folder
    ([f"{c}/{p}/{n}.jpg" for c in "ABC" for p in ("anna", "ben", "cleo") for n in (1, 2)],
     ("^([^/]+)/", 3)),
    # the class's own naming (A_0001.jpg): a prefix in one class only is no person
    ([f"{c}/{c}_{n:04d}.jpg" for c in "ABC" for n in range(6)], None),
    # no separator (the shared ASL photos: A1008.jpg)
    ([f"{c}/{c}{n}.jpg" for c in "ABC" for n in range(6)], None),
])
def test_file_names_that_look_as_if_they_name_people_are_found(names, found):
    assert person_pattern(names) == found


PEOPLE = ("anna", "ben", "cleo", "dev", "eli", "fay")


@pytest.mark.parametrize("names, swapped", [
    # PERSON/CLASS/FILE: asl-sweep would take the six people for classes
    ([f"{p}/{c}/{n}.jpg" for p in PEOPLE for c in "ABC" for n in (1, 2)],
     (sorted(PEOPLE), ["A", "B", "C"])),
    # CLASS/PERSON/FILE, as asl-sweep reads it: more people than letters
    ([f"{c}/{p}/{n}.jpg" for c in "ABC" for p in PEOPLE for n in (1, 2)], None),
    # a few people in each of a few classes: not more than twice as many top folders
    ([f"{c}/{p}/{n}.jpg" for c in "ABC" for p in ("anna", "ben") for n in (1, 2)], None),
    # not the same sub-folders everywhere, or files beside them
    ([f"{p}/{c}/1.jpg" for p in PEOPLE for c in "ABC" if (p, c) != ("fay", "C")], None),
    ([f"{p}/{c}/1.jpg" for p in PEOPLE for c in "AB"] + ["anna/loose.jpg"], None),
    ([f"{c}/{p}_{c}.jpg" for c in "ABC" for p in PEOPLE], None),
])
def test_photos_kept_in_a_folder_per_person_above_the_classes_are_found(names, swapped):
    assert folders_swapped(names) == swapped
