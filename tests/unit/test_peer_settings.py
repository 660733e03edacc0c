"""The sessions' two bounds: how often a server looks for dead peers, how long a peer has to answer."""

from __future__ import annotations

import pytest

from effectd.config.settings import Settings, build_settings
from effectd.errors import ConfigError


def test_the_peer_bounds_default_to_seeing_a_dead_peer_within_five_seconds() -> None:
    settings = build_settings({})
    assert (settings.peer_check_s, settings.peer_answer_s) == (Settings.peer_check_s, Settings.peer_answer_s)
    assert settings.peer_check_s <= 4


def test_the_peer_bounds_come_from_the_file() -> None:
    settings = build_settings({"peer_check_s": 0.2, "peer_answer_s": 2})
    assert (settings.peer_check_s, settings.peer_answer_s) == (0.2, 2)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("peer_check_s", 0, "config `peer_check_s` must be between 0.05 and 4, not 0"),
        ("peer_check_s", 10, "config `peer_check_s` must be between 0.05 and 4, not 10"),
        ("peer_answer_s", 0.1, "config `peer_answer_s` must be between 0.5 and 50, not 0.1"),
        ("peer_answer_s", "5", "config `peer_answer_s` must be a number, not '5'"),
    ],
)
def test_a_peer_bound_out_of_range_is_refused_naming_its_range(key: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_settings({key: value})
    assert str(raised.value) == says
