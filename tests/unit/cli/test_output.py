"""Human output never passes a control character to the terminal."""

from __future__ import annotations

from sandboxer.cli.output import kv, printable, table

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\r\nline\x9b31m\u202egnp.exe\x00"


def test_control_characters_are_escaped_in_tables_and_key_values() -> None:
    for text in (table(["name"], [[HOSTILE]]), kv([("name", HOSTILE)])):
        assert not any(ord(c) < 0x20 and c != "\n" for c in text)
        assert "\x7f" not in text
        assert not any(0x80 <= ord(c) <= 0x9f for c in text)
        assert "\u202e" not in text
        assert "\\x1b]0;pwned\\x07" in text
    assert table(["a"], [["plain"], [None]]).splitlines() == ["A", "plain", "-"]


def test_messages_keep_their_own_newlines() -> None:
    assert printable("one\ntwo\x1b", keep="\n") == "one\ntwo\\x1b"
    assert printable("caf\udce9") == "caf\\udce9"
