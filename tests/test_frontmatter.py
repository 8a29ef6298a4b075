"""The one front-matter reader shared by posts folders and announcements."""

from __future__ import annotations

import pytest

from newsletter.content.frontmatter import FrontMatterError, split_front_matter


def test_front_matter_and_body_are_split() -> None:
    split = split_front_matter("---\nsubject: Hello\ndate: 2026-11-02\n---\n\nBody.\n")
    assert split.present and split.meta["subject"] == "Hello"
    assert split.body == "\nBody.\n"


def test_a_dotted_line_closes_it_and_an_empty_block_is_no_keys() -> None:
    assert split_front_matter("---\ntitle: A\n...\nBody\n").meta == {"title": "A"}
    assert split_front_matter("---\n---\nBody\n").meta == {}


def test_text_without_front_matter_is_all_body() -> None:
    split = split_front_matter("Just text.\n")
    assert not split.present and split.meta == {} and split.body == "Just text.\n"


@pytest.mark.parametrize(
    ("text", "kind", "words"),
    [
        ("---\ntitle: No end\nBody\n", "unclosed", "no closing --- line"),
        ("---\ntitle: a: b\n---\n", "yaml", "not valid YAML (line 2: mapping values"),
        ("---\n- a list\n---\nBody\n", "shape", "must be `key: value` lines"),
    ],
)
def test_unreadable_front_matter_says_why(text: str, kind: str, words: str) -> None:
    with pytest.raises(FrontMatterError) as caught:
        split_front_matter(text)
    assert caught.value.kind == kind and words in str(caught.value)
