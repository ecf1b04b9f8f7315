"""Long replies: parts within Discord's limit, code fences balanced in each, nothing lost."""

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.splitting import DISCORD_LIMIT, split_reply


def _fence_lines(part: str) -> int:
    return sum(1 for line in part.split("\n") if line.strip().startswith("```"))


def _without_fences(text: str) -> str:
    return "".join(line for line in text.split("\n") if not line.strip().startswith("```"))


line = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
    st.sampled_from(["```python", "```", "👍🏽 👨‍👩‍👧", "x" * 2500, "日本語" * 300, "- item"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=40))
def test_parts_fit_and_keep_fences_balanced(lines):
    text = "\n".join(lines)
    parts = split_reply(text)
    assert all(0 < len(p) <= DISCORD_LIMIT for p in parts)
    assert _without_fences("".join(parts)).replace("\n", "") == _without_fences(text).replace(
        "\n", ""
    )
    # every part but the last is balanced on its own (the last mirrors the model's own text)
    assert all(_fence_lines(p) % 2 == 0 for p in parts[:-1])


def test_short_text_is_one_part_and_empty_is_none():
    assert split_reply("hello") == ["hello"]
    assert split_reply("") == []
    assert split_reply("x" * 2000) == ["x" * 2000]


def test_code_block_spanning_a_cut_is_closed_and_reopened_with_its_language():
    code = "\n".join(f"print({i})" for i in range(400))
    parts = split_reply(f"Here:\n```python\n{code}\n```\nDone.")
    assert len(parts) >= 2
    assert parts[0].endswith("```")
    assert parts[1].startswith("```python\n")
    assert parts[-1].endswith("Done.")


def test_cuts_prefer_line_breaks_then_spaces():
    text = ("word " * 300).strip() + "\n" + "tail " * 200
    first = split_reply(text)[0]
    assert first.endswith("\n") or first.endswith(" ")
    assert not first.rstrip().endswith("wor")


def test_growing_text_never_changes_earlier_parts():
    text = "".join(f"line {i} " + ("lorem ipsum " * (i % 7)) + "\n" for i in range(600))
    final = split_reply(text)
    for end in range(2500, len(text), 997):
        partial = split_reply(text[:end])
        assert partial[:-1] == final[: len(partial) - 1]


def test_emoji_sequences_are_not_cut_apart():
    family = "👨‍👩‍👧‍👦"
    parts = split_reply(family * 600)
    for p in parts:
        assert not p.startswith("\u200d") and not p.endswith("\u200d")
