"""The output log's pieces on their own: line splitting and UTF-8 safe reads."""

from __future__ import annotations

from effectd.supervisor.output import LineSplitter, OutputLog


def test_the_line_splitter_joins_a_line_that_arrives_in_many_chunks():
    splitter = LineSplitter(limit=100)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde") == [b"abc"]
    assert splitter.feed(b"\n\nf") == [b"de", b""]
    assert splitter.rest() == b"f"


def test_the_line_splitter_drops_a_line_over_its_limit_and_recovers_at_the_next_newline():
    splitter = LineSplitter(limit=4)
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"defgh") == []
    assert splitter.feed(b"ij\nok\n") == [b"ok"]
    assert splitter.rest() == b""


def test_a_read_never_ends_inside_a_character_and_gives_a_whole_one_when_max_bytes_is_smaller(tmp_path):
    log = OutputLog(tmp_path / "e.log", limit=1 << 20)
    log.write("a€b".encode())
    assert log.read(0, 2) == ("a", 1)
    assert log.read(1, 1) == ("€", 4)
    log.write(b"\xe2\x82")  # the start of another euro sign, not finished yet
    assert log.read(5, 1) == ("", 5)
    log.close()
    assert log.read(5, 1) == ("\ufffd", 7)
