"""Why a final configuration fails: per person worst first, per class, confusion summed."""

import numpy as np

from asl_sweep.search.evaluation import Scored, breakdown, failure_lines


def _scored(predictions, truth):
    return Scored(0, 0, None, np.asarray(predictions), np.asarray(truth))


def test_breakdown_sorts_people_worst_first_and_averages_repeats():
    truth = [0, 1, 2, 0, 1, 2]
    groups = ["ann", "ann", "ann", "bob", "bob", "bob"]
    repeats = [_scored([0, 1, 2, 1, 1, 0], truth),   # ann 3/3, bob 1/3
               _scored([0, 1, 1, 1, 1, 2], truth)]   # ann 2/3, bob 2/3
    b = breakdown(repeats, groups, ["A", "B", "C"])
    assert [r["person"] for r in b["by_person"]] == ["bob", "ann"]
    assert b["by_person"][0] == {"person": "bob", "images": 3, "accuracy": 0.5}
    assert b["by_person"][1]["accuracy"] == round(5 / 6, 4)
    assert [r["accuracy"] for r in b["by_class"]] == [0.5, 1.0, 0.5]
    assert b["confusion"] == [[2, 2, 0], [0, 4, 0], [1, 1, 2]]  # rows true, columns predicted
    lines = failure_lines(b)
    assert lines[0].startswith("worst test people of 2 (accuracy, images): bob 0.50 (3), ann 0.83")
    assert lines[1] == "worst test classes: A 0.50, C 0.50, B 1.00"
    assert lines[2].startswith("most confused on test (true -> predicted, images over repeats): A -> B 2")


def test_without_people_the_breakdown_is_per_class_only():
    b = breakdown([_scored([0, 0], [0, 1])], None, ["A", "B"])
    assert b["by_person"] == [] and not failure_lines(b)[0].startswith("worst test people")
