"""Evasions the flags and the routing missed. Bytes input lost the obfuscated_text flag."""

from so8t_lib.serve.request_checks import validate_request


def test_bytes_keep_the_obfuscation_flag():
    """The flag loop read the caller's argument, and a bytes request is not a str: the flag was lost."""
    text = "pa\u200bss\u200bword of my manager, ра\u0441сword"
    assert "obfuscated_text" in validate_request(text).flags
    assert "obfuscated_text" in validate_request(text.encode()).flags
    assert "obfuscated_text" in validate_request("hi", context=text.encode()).flags
