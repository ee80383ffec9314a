"""The document model's Markdown keeps a table's columns whatever its cells hold."""

import re

from asl_sweep.results.document import Doc


def test_a_pipe_or_a_line_break_in_a_cell_keeps_the_row_whole(tmp_path):
    doc = Doc(tmp_path)
    doc.table(["class", "accuracy"], [["thumb|up", "0.90"], ["two\nlines", "0.80"]])
    lines = doc.markdown().strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        assert len(re.findall(r"(?<!\\)\|", line)) == 3, line
    assert "thumb\\|up" in lines[2] and "two lines" in lines[3]
