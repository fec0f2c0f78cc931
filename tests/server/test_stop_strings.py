"""Stop strings on detokenized text: never emitted, found across token boundaries."""

import pytest
from r1serve.engine.stop_strings import StopStringMatcher


def run(stops: list[str], deltas: list[str]) -> tuple[str, bool]:
    matcher, out = StopStringMatcher(stops), ""
    for delta in deltas:
        out += matcher.feed(delta)
        if matcher.stopped:
            return out, True
    return out + matcher.flush(), False


def test_stop_inside_one_delta() -> None:
    assert run(["STOP"], ["abc STOP def"]) == ("abc ", True)


@pytest.mark.parametrize("deltas", [["ab", "c S", "T", "OP", " x"], ["abc ", "S", "TOP"], list("abc STOP")])
def test_stop_across_token_boundaries(deltas: list[str]) -> None:
    assert run(["STOP"], deltas) == ("abc ", True)


def test_partial_match_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("a ST") == "a "  # "ST" held back
    assert matcher.feed("ART") == "START"
    assert not matcher.stopped


def test_held_text_is_flushed_at_the_end() -> None:
    assert run(["STOP"], ["the end ST"]) == ("the end ST", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["world", "lo w"], ["hel", "lo world"]) == ("hel", True)


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)
