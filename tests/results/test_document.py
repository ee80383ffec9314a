"""The document model's Markdown keeps a table's columns whatever its cells hold, and shows
names as text, never as HTML."""

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


def test_a_name_that_is_html_is_shown_as_text_where_the_markdown_is_rendered(tmp_path):
    """Python-Markdown (the renderer MkDocs uses) passes raw HTML through: a class folder
    named "<i>x" reached the page as an <i> tag, the text after it in italics."""
    import markdown

    doc = Doc(tmp_path)
    doc.h(2, "Stage <em>one</em>")
    doc.p("Per class: <i>x 100.0%, a<b 50.0%, 1 < 2 -> fine.")
    doc.table(["class", "accuracy"], [["<i>x", "0.90"], ["a<b", "0.80"], ["<!--", "0.70"]])
    page = markdown.markdown(doc.markdown(), extensions=["tables"])
    assert "<i>" not in page and "<em>one" not in page and "<b" not in page, page
    assert "<!--" not in page and "&lt;!--" in page, page
    assert "&lt;i&gt;x" in page and "a&lt;b" in page and "1 &lt; 2 -&gt; fine" in page, page
    assert page.count("<tr>") == 4 and page.count("<td>") == 6, page
