"""The one-line text helpers every part of the project calls."""

from handler.text import error_line, last_line, shorten


def test_error_line_takes_the_first_non_blank_line_and_names_the_type_when_asked():
    assert error_line(ValueError("\n  cannot read x.yaml\n  line 2, column 3")) == "cannot read x.yaml"
    assert error_line(KeyError("boxes"), with_type=True) == "KeyError: 'boxes'"
    assert error_line(RuntimeError()) == "RuntimeError"
    assert error_line(RuntimeError("  "), with_type=True) == "RuntimeError"


def test_last_line_is_where_a_traceback_states_its_error():
    traceback = "Traceback (most recent call last):\n  File \"x.py\", line 1\nOSError: disk full\n\n"
    assert last_line(traceback) == "OSError: disk full"
    assert last_line("") == "no message"


def test_shorten_keeps_short_text_and_cuts_long_text_to_the_limit():
    assert shorten("abc", 3) == "abc"
    assert shorten("abcdefghij", 6) == "abc..."
    assert len(shorten("x" * 500, 200)) == 200
