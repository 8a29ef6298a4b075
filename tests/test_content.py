"""newsletter.content.text: the one HTML-to-text reading, in its two shapes."""

from __future__ import annotations

import pytest

from newsletter.content.text import html_to_text, html_to_words, summarise, text_to_html


def test_readable_text_keeps_paragraphs_lists_quotes_and_link_targets() -> None:
    html = (
        "<h2>News</h2><p>Read <a href='https://example.com/a'>the post</a>.</p>"
        "<ol><li>one</li><li>two<ul><li>inner</li></ul></li></ol>"
        "<blockquote>quoted</blockquote><p><img src='x.png' alt='a chart'></p>"
    )
    assert html_to_text(html) == (
        "News\n\nRead the post (https://example.com/a).\n\n1. one\n2. two\n\n  - inner"
        "\n\n> quoted\n\n[a chart]"
    )


def test_readable_text_parts_table_cells() -> None:
    assert html_to_text("<table><tr><td>Day</td><td>Talk</td></tr></table>") == "Day Talk"


def test_a_link_whose_words_are_its_address_is_not_repeated() -> None:
    html = "<p><a href='mailto:me@example.com'>me@example.com</a></p>"
    assert html_to_text(html) == "me@example.com"


@pytest.mark.parametrize(
    ("html", "words"),
    [
        ("<p>One</p><p>two</p>", "One two"),
        ("<ul><li>a</li><li>b</li></ul>", "a b"),
        ("A<br>B", "A B"),
        ("<p>Fish &amp; chips</p><script>alert(1)</script><style>p{}</style>", "Fish & chips"),
        ("<a href='https://example.com'>no target</a> <img alt='no alt'>", "no target"),
        ("  plain\n text  ", "plain text"),
        ("1 < 2", "1 < 2"),
    ],
)
def test_words_are_one_line_without_targets_or_markup(html: str, words: str) -> None:
    assert html_to_words(html) == words


def test_summaries_cut_on_words_and_end_with_one_ellipsis() -> None:
    assert summarise("<p>one two three four</p>", words=2) == "one two…"
    assert summarise("<p>An excerpt [&hellip;]</p>") == "An excerpt…"


def test_text_becomes_escaped_paragraphs() -> None:
    assert text_to_html("a < b\nc\n\nd") == "<p>a &lt; b<br>c</p><p>d</p>"
