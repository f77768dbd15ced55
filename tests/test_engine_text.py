"""Text out of tokens: stop strings and split characters, without a model."""

from __future__ import annotations

from ollama_py.engine.stops import StopMatcher, TokenText


def test_stop_matcher_holds_back_only_what_could_still_stop() -> None:
    matcher = StopMatcher(("</answer>", "STOP"))
    assert matcher.feed("The answer is 4 <") == ("The answer is 4 ", False)
    assert matcher.feed("/ans") == ("", False)
    assert matcher.feed("wer> and more") == ("", True)
    matcher = StopMatcher(("</answer>",))
    assert matcher.feed("a </an") == ("a ", False)
    assert matcher.feed("t") == ("</ant", False)
    assert matcher.feed("ST") == ("ST", False)
    assert matcher.feed("<") == ("", False)
    assert matcher.flush() == "<"


def test_character_split_across_tokens_comes_out_whole() -> None:
    text = TokenText()
    snowman = "☃".encode()
    assert text.feed(b"a" + snowman[:1]) == "a"
    assert text.feed(snowman[1:]) == "☃"
    assert text.feed(b"\xe2") == ""
    assert text.flush() == "\ufffd"
