"""Hostile input: every tool fuzzed with hypothesis, bytes that are not UTF-8, and junk on the stdio wire.

A call is either accepted (only when it is valid) or refused with a tool error; a refused call writes
no journal event; and the server keeps answering. The fuzzing runs against one long-lived engine in
a background thread (an anyio blocking portal), so hundreds of examples take seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mcp import Client

from effectd.config.settings import MAX_ARGV_BYTES, build_settings
from effectd.engine.core import Engine
from effectd.harness.profiles import HarnessProfile
from tests.helpers.mcp import call, connected, structured, text_of
from tests.helpers.processes import effectd_bin, event_count, py

OK, EITHER, BAD = 0, 1, 2  # verdicts, combined with max(): one bad argument makes the call bad
WEEK = 7 * 24 * 3600
FAKE = HarnessProfile(
    name="fake",
    command=(sys.executable, "-m", "effectd.harness.fake", "--delay", "0", "--steps", "1", "{prompt}"),
    parser="claude",
)
# Stands for the id of a seeded effect (known only at run time) inside generated arguments.
SEEDS = ("@succeeded", "@failed", "@binary")
UNIQUE_KEY = "@unique-key"
_keys = itertools.count()

# Output that is not valid UTF-8 (stray bytes, a cut 2-byte character, an encoded surrogate) between
# valid 2-, 3- and 4-byte characters, ending in a character cut off for good; the last 4 KiB start
# inside a 3-byte character, so the tail must drop its stray continuation bytes.
BAD_LINE = b"ok \xff\xfe bad \xc3\x28 euro \xe2\x82\xac smile \xf0\x9f\x98\x80 \xed\xa0\x80 end\n"
BINARY = BAD_LINE * 20 + "\u00e9\u00e8\u4e2d\u6587".encode() * 420 + b"\xe2\x82"
WRITE_BINARY = f"import sys; sys.stdout.buffer.write({BINARY!r})"


@dataclass
class Live:
    portal: BlockingPortal
    client: Client
    engine: Engine
    db: Path
    seeds: dict[str, str]

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return self.portal.call(self.client.call_tool, tool, arguments)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One engine and in-memory client for all examples, served from a background event loop."""
    db = tmp_path_factory.mktemp("hostile") / "journal.db"
    settings = replace(
        build_settings({}, db=db, allow_any_command=True),
        default_grace_s=0.2,
        result_grace_s=0.2,
        poll_control_s=0.05,
        harnesses={**build_settings({}).harnesses, "fake": FAKE},
    )
    with start_blocking_portal(backend="asyncio") as portal:
        with portal.wrap_async_context_manager(connected(settings)) as (engine, client):
            seeds = {}
            for name, command in zip(SEEDS, (["/bin/true"], ["/bin/false"], py(WRITE_BINARY)), strict=True):
                record = structured(
                    portal.call(client.call_tool, "dispatch_effect", {"command": command, "group": "seeds"})
                )
                assert record["status"] in ("succeeded", "failed"), record
                seeds[name] = record["effect_id"]
            yield Live(portal, client, engine, db, seeds)


def substitute(value: Any, live: Live) -> Any:
    if isinstance(value, str):
        if value == UNIQUE_KEY:
            return f"key-{next(_keys)}"
        return live.seeds.get(value, value)
    if isinstance(value, list):
        return [substitute(v, live) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, live) for k, v in value.items()}
    return value


def check_one_call(live: Live, tool: str, arguments: dict[str, Any], verdict: int) -> None:
    """Sends one call and checks: refused only when invalid, accepted only when valid, a refusal
    writes nothing, an accepted effect ends, and the server still answers afterwards."""
    arguments = substitute(arguments, live)
    before = event_count(live.db)
    result = live.call(tool, arguments)
    after = event_count(live.db)
    shown = repr(arguments)[:300]
    event(f"{tool}: {'refused' if result.is_error else 'accepted'}, oracle said {('ok', 'either', 'bad')[verdict]}")
    if result.is_error:
        assert verdict != OK, f"{tool}({shown}) was refused: {text_of(result)[:500]}"
        assert after == before, f"{tool}({shown}) was refused but wrote {after - before} events"
        assert text_of(result).strip(), "a refusal without a message"
    else:
        assert verdict != BAD, f"{tool}({shown}) was accepted: {str(structured(result))[:300]}"
        if tool == "dispatch_effect":
            effect_id = structured(result)["effect_id"]
            outcome = structured(live.call("await_group", {"effect_ids": [effect_id], "timeout_s": 30}))
            assert outcome["complete"], f"{tool}({shown}) left an effect running"
        else:
            assert after == before, f"{tool}({shown}) only reads, yet wrote {after - before} events"
    alive = live.call("list_effects", {"limit": 3})  # the newest records, this call's effect among them
    assert not alive.is_error, f"after {tool}({shown}): list_effects fails: {text_of(alive)[:300]}"


# --- argument strategies ---------------------------------------------------------------------------------
#
# Every argument has a strategy of valid values and one of invalid values (and, for the few cases the
# contract leaves open, of values that may go either way). An example is a valid call, most often
# with one or two hostile mutations: an invalid value, a conflicting form, an unknown name.

# Lone surrogates are left out: the in-memory client cannot even serialise some of them, and over a
# real transport JSON parsing refuses them (see the dedicated tests below).
CLEAN = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
ANY_CHAR = st.characters(blacklist_categories=("Cs",))


def text(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    return st.text(CLEAN, min_size=min_size, max_size=max_size)


def with_nul() -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: f"{a}\0{b}", text(), text())


@dataclass(frozen=True)
class Arg:
    good: st.SearchStrategy[Any]
    bad: st.SearchStrategy[Any]
    open: st.SearchStrategy[Any] | None = None  # the contract allows refusing or accepting these

    def draw(self, draw: st.DrawFn, verdict: int) -> Any:
        if verdict == EITHER and self.open is not None:
            return draw(self.open)
        return draw(self.bad if verdict == BAD else self.good)


NOT_A_STRING = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2), st.just({"a": 1}))
NOT_A_NUMBER = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2), st.just({}))
HUGE = [2**31, 2**63, 10**30]


def seconds(low: float, high: float, *, low_open: bool = False, optional: bool = False) -> Arg:
    """A duration: valid inside [low, high] (or (low, high]), refused outside or when not a number."""
    inside = st.one_of(
        st.floats(low, high, exclude_min=low_open, allow_nan=False, allow_infinity=False),
        st.integers(int(low) + (1 if low_open else 0), int(high)),
        st.sampled_from([high, *([] if low_open else [low])]),
    )
    outside = st.one_of(
        st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, allow_infinity=False),
        st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False),
        st.sampled_from([*HUGE, -(10**30), -1]),
        NOT_A_NUMBER,
        *([] if optional else [st.none()]),
    )
    return Arg(st.one_of(inside, st.none()) if optional else inside, outside)


def name(prefix: str) -> Arg:
    """A name (group, run_id): 1 to 256 characters."""
    return Arg(
        st.one_of(text(1, 40).map(lambda t: (prefix + t)[:256]), st.just(prefix + "n" * (256 - len(prefix)))),
        st.one_of(st.just(""), st.just("n" * 257), NOT_A_STRING),
    )


ENV_NAME = text(1, 12).filter(lambda t: "=" not in t)
DIRECTORIES = ["/", "/tmp", ".", "", "../../", "/proc/self/root/tmp", "/proc/self/cwd", "~", "/tmp/./..", "//tmp"]
NOT_DIRECTORIES = ["/no/such/dir", "../../no/such", "/proc/self/root/no/such", "/etc/passwd", "/dev/null", "x" * 5000]
BIG_ARG = "a" * 100_000  # one argument under the kernel's 128 KiB limit per string

DISPATCH_ARGS: dict[str, Arg] = {
    "background": Arg(st.booleans(), st.one_of(st.none(), st.text(max_size=3), st.integers())),
    "wait_s": seconds(0, 55),
    "group": Arg(name("g-").good, st.one_of(name("g-").bad, with_nul())),
    "run_id": name("r-"),  # NUL in a run id: see test_a_run_id_holding_nul_is_refused_before_anything_is_written
    "label": Arg(
        st.one_of(text(0, 40), st.just("l" * 1000), st.none()), st.one_of(st.just("l" * 1001), with_nul(), NOT_A_STRING)
    ),
    "key": Arg(st.just(UNIQUE_KEY), st.one_of(st.just(""), st.just("k" * 257), with_nul(), NOT_A_STRING)),
    "depends_on": Arg(
        st.one_of(st.lists(st.sampled_from(SEEDS), max_size=3), st.none()),  # a failed one: accepted, then skipped
        st.one_of(
            st.lists(text(1, 20).map(lambda t: "eff_unknown" + t), min_size=1, max_size=2),
            st.sampled_from(["@succeeded", [1], ["@succeeded", "no-such-effect"]]),
        ),
    ),
    "timeout_s": seconds(0, WEEK, low_open=True, optional=True),
    "idle_timeout_s": seconds(0, WEEK, low_open=True, optional=True),
    "grace_s": seconds(0, 600, optional=True),
    "cwd": Arg(
        st.one_of(st.sampled_from(DIRECTORIES), st.none()),
        st.one_of(st.sampled_from(NOT_DIRECTORIES), with_nul(), NOT_A_STRING),
    ),
    "env": Arg(
        st.one_of(st.dictionaries(ENV_NAME, text(0, 20), max_size=3), st.none()),
        st.sampled_from([{"": "x"}, {"A=B": "x"}, {"A\0B": "x"}, {"A": "x\0y"}, {"A": 1}, ["A"], "A=1"]),
    ),
    "stdin": Arg(
        st.one_of(st.text(ANY_CHAR, max_size=50), st.just("s" * (1024 * 1024)), st.none()),  # NUL is fine in stdin
        st.one_of(st.integers(), st.lists(st.text(max_size=2), max_size=2)),
    ),
    "max_attempts": Arg(st.integers(1, 100), st.sampled_from([0, 101, -1, 1.5, "2", True, None, *HUGE])),
    "retry_backoff_s": seconds(0, 3600),
    "group_max_concurrency": Arg(st.integers(1, 10_000), st.sampled_from([0, 10_001, -3, 1.5, "3"])),
}
COMMANDS = Arg(
    st.one_of(
        st.just(["/bin/true"]),
        st.just(["true"]),
        st.lists(text(0, 20), max_size=4).map(lambda args: ["/bin/true", *args]),
        st.just(["/bin/true", BIG_ARG]),
        st.just(["/no/such/program"]),  # only the spawn can tell: accepted, then `failed`
    ),
    st.one_of(
        st.sampled_from([[], "echo hi", [1], [None], ["/bin/true", 2], {"a": 1}]),
        with_nul().map(lambda t: ["/bin/true", t]),
        st.just(["/bin/true", *[BIG_ARG] * (MAX_ARGV_BYTES // len(BIG_ARG) + 1)]),
    ),
    open=st.just(["/bin/true", "a" * 200_000]),  # under 256 KiB in all, over the kernel's limit for one string
)
HARNESS_FORMS = Arg(
    st.one_of(
        st.builds(lambda p: {"harness": "fake", "prompt": p}, text(0, 30)),
        st.builds(
            lambda p, a: {"harness": "fake", "prompt": p, "args": a}, text(0, 10), st.lists(text(0, 5), max_size=2)
        ),
    ),
    st.one_of(
        st.builds(lambda p: {"harness": "fake", "prompt": p}, with_nul()),
        st.builds(lambda a: {"harness": "fake", "prompt": "x", "args": [a]}, with_nul()),
        st.builds(lambda h: {"harness": "unknown-" + h, "prompt": "x"}, text(0, 10)),
        st.sampled_from(
            [
                {"harness": "fake"},
                {"harness": "fake", "prompt": "x", "args": [1]},
                {"harness": "claude", "prompt": "x"},  # its program is not installed here
                {"harness": "", "prompt": "x"},
                {"harness": "fake", "prompt": "p" * (MAX_ARGV_BYTES + 1)},
            ]
        ),
    ),
)
FORM_CONFLICTS = st.sampled_from(
    [
        {"command": ["/bin/true"], "harness": "fake", "prompt": "x"},
        {"command": ["/bin/true"], "prompt": "x"},
        {"command": ["/bin/true"], "args": ["x"]},
        {},
        {"prompt": "x"},
    ]
)
FORM = ("command", "harness", "prompt", "args")
UNKNOWN_NAMES = st.one_of(
    st.sampled_from(["timout_s", "Command", "backgroud", "shell", "cmd", "priority"]),
    text(1, 12).filter(lambda t: t not in DISPATCH_ARGS and t not in FORM and t not in ("effect_id", "cursor")),
)


@st.composite
def dispatch_calls(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A valid dispatch, and more often than not one or two hostile mutations of it."""
    names = draw(st.lists(st.sampled_from(sorted(DISPATCH_ARGS)), unique=True, max_size=5))
    mutations = draw(st.lists(st.sampled_from(["value", "value", "form", "unknown", "open"]), max_size=2))
    if draw(st.booleans()):
        arguments = {"command": COMMANDS.draw(draw, EITHER if "open" in mutations else OK)}
        verdict = EITHER if "open" in mutations else OK
    else:
        arguments, verdict = dict(HARNESS_FORMS.draw(draw, OK)), OK
    if "form" in mutations:
        arguments = {k: v for k, v in arguments.items() if k not in FORM}
        if draw(st.booleans()):
            arguments.update(draw(FORM_CONFLICTS))
        elif draw(st.booleans()):
            arguments["command"] = COMMANDS.draw(draw, BAD)
        else:
            arguments.update(HARNESS_FORMS.draw(draw, BAD))
        verdict = BAD
    spoiled = (
        set(draw(st.lists(st.sampled_from(names), unique=True, max_size=mutations.count("value")))) if names else set()
    )
    for arg in names:
        arguments[arg] = DISPATCH_ARGS[arg].draw(draw, BAD if arg in spoiled else OK)
    if spoiled:
        verdict = BAD
    if arguments.get("group_max_concurrency") is not None and arguments.get("group") is None:
        verdict = BAD  # a cap without a group would cap nothing
    if "unknown" in mutations:
        arguments[draw(UNKNOWN_NAMES)] = draw(st.one_of(st.integers(), text(0, 5)))
        verdict = BAD
    arguments.setdefault("background", True)
    return arguments, verdict


def effect_id_arg() -> Arg:
    return Arg(
        st.sampled_from(SEEDS),
        st.one_of(
            text(1, 30).map(lambda t: "eff_unknown" + t),
            st.sampled_from(["", "e" * 257, "eff_\0", "../../etc/passwd", "%", "*", None]),
            NOT_A_STRING,
        ),
    )


STATUSES = ["pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped"]
OTHER_TOOLS: dict[str, dict[str, Arg]] = {
    "poll_effect": {"effect_id": effect_id_arg()},
    "cancel_effect": {
        "effect_id": effect_id_arg(),
        "reason": Arg(
            st.one_of(text(0, 40), st.just("r" * 2000), st.none()), st.one_of(st.just("r" * 2001), NOT_A_STRING)
        ),
        "grace_s": seconds(0, 600, optional=True),
    },
    "stream_effect": {
        "effect_id": effect_id_arg(),
        "cursor": Arg(
            st.one_of(st.integers(0, len(BINARY) + 10), st.sampled_from(HUGE)), st.one_of(st.just(-1), NOT_A_NUMBER)
        ),
        "max_bytes": Arg(st.integers(1, 1024 * 1024), st.sampled_from([0, -1, 1024 * 1024 + 1, 1.5, None])),
        "wait_s": seconds(0, 55),
    },
    "await_group": {
        "group": Arg(st.just("seeds"), st.one_of(text(1, 20).map(lambda t: "unknown-" + t), st.just(""), NOT_A_STRING)),
        "effect_ids": Arg(
            st.lists(st.sampled_from(SEEDS), min_size=1, max_size=5),
            st.one_of(
                st.lists(text(1, 10).map(lambda t: "eff_unknown" + t), min_size=1, max_size=2),
                st.sampled_from([[], ["@succeeded", 3], "@succeeded"]),
            ),
        ),
        "mode": Arg(st.sampled_from(["all", "any"]), st.sampled_from(["some", "ALL", "", 1, None])),
        "timeout_s": seconds(0, 55),
        "cursor": Arg(st.one_of(st.integers(0, 1000), st.sampled_from(HUGE)), st.sampled_from([-5, 1.5, "0"])),
    },
    "cancel_group": {
        "group": Arg(st.just("seeds"), st.one_of(text(1, 20).map(lambda t: "unknown-" + t), NOT_A_STRING)),
        "reason": Arg(st.one_of(text(0, 20), st.none()), st.just("r" * 2001)),
    },
    "list_effects": {
        "run_id": name("r-"),
        "group": name("g-"),
        "status": Arg(
            st.lists(st.sampled_from(STATUSES), max_size=3), st.sampled_from([["done"], "running", [1], ["RUNNING"]])
        ),
        "limit": Arg(st.integers(1, 1000), st.sampled_from([0, 1001, -1, 2**63, 1.5, "5", None])),
    },
    "list_harnesses": {},
}
REQUIRED = {
    "poll_effect": "effect_id",
    "cancel_effect": "effect_id",
    "stream_effect": "effect_id",
    "cancel_group": "group",
}


@st.composite
def other_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any], int]:
    """A call to any other tool: valid, or with bad values, a missing or conflicting argument, an unknown name."""
    tool = draw(st.sampled_from(sorted(OTHER_TOOLS)))
    args = OTHER_TOOLS[tool]
    names = draw(st.lists(st.sampled_from(sorted(args)), unique=True, max_size=len(args))) if args else []
    required = REQUIRED.get(tool)
    if required and required not in names and draw(st.integers(0, 4)):
        names.append(required)
    if tool == "await_group" and draw(st.integers(0, 4)):
        names = [n for n in names if n not in ("group", "effect_ids")] + [
            draw(st.sampled_from(["group", "effect_ids"]))
        ]
    hostile = draw(st.booleans())
    spoiled = set(draw(st.lists(st.sampled_from(names), unique=True, max_size=2))) if hostile and names else set()
    arguments = {n: args[n].draw(draw, BAD if n in spoiled else OK) for n in names}
    verdict = BAD if spoiled else OK
    if required and required not in arguments:
        verdict = BAD
    if tool == "await_group" and ("group" in arguments) == ("effect_ids" in arguments):
        verdict = BAD  # exactly one of the two
    if hostile and not spoiled:
        arguments[draw(UNKNOWN_NAMES)] = 1
        verdict = BAD
    return tool, arguments, verdict


# 40 calls per tool in the developer loop; .ci/run sets 150.
FUZZ = hsettings(
    max_examples=int(os.environ.get("EFFECTD_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(example=dispatch_calls())
def test_a_fuzzed_dispatch_is_accepted_only_when_valid_and_a_refusal_writes_nothing(live, example):
    arguments, verdict = example
    check_one_call(live, "dispatch_effect", arguments, verdict)


@FUZZ
@given(example=other_calls())
def test_every_other_tool_refuses_bad_arguments_without_writing_and_answers_good_ones(live, example):
    tool, arguments, verdict = example
    check_one_call(live, tool, arguments, verdict)


# --- output that is not UTF-8 -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_output_that_is_not_utf8_comes_back_with_replacement_characters_through_every_tool(settings):
    expected = BINARY.decode("utf-8", "replace")
    assert BINARY[-4096] & 0xC0 == 0x80, "the tail should start inside a character"

    async def read(client: Client, effect_id: str, cursor: int, max_bytes: int, until: int | None = None) -> tuple:
        """Reads from `cursor` in steps of `max_bytes`, to the end (or to `until`); checks each step."""
        text = ""
        with anyio.fail_after(30):
            while until is None or cursor < until:
                chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, max_bytes=max_bytes)
                assert chunk["cursor"] > cursor or chunk["eof"], (max_bytes, cursor, chunk)
                assert chunk["cursor"] - cursor <= max_bytes + 3
                text, cursor = text + chunk["data"], chunk["cursor"]
                if chunk["eof"]:
                    break
        return text, cursor

    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(WRITE_BINARY), group="binary")
        effect_id = record["effect_id"]
        listed = await call(client, "list_effects", group="binary")
        awaited = await call(client, "await_group", group="binary")
        whole = await call(client, "stream_effect", effect_id=effect_id, max_bytes=1024 * 1024)
        pieces = {n: (await read(client, effect_id, 0, n))[0] for n in (7, 64, 4096)}
        head = {n: await read(client, effect_id, 0, n, until=4 * len(BAD_LINE)) for n in (1, 2, 3)}
        end = len(BINARY) - 2 - 30  # the start of the last three whole 10-byte groups
        last = {n: (await read(client, effect_id, end, n))[0] for n in (1, 2, 3)}
        odd = {}
        for cursor in [*range(0, 12), len(BINARY) - 3, len(BINARY) - 1, len(BINARY), len(BINARY) + 100, 2**63]:
            odd[cursor] = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, max_bytes=3)
    assert record["status"] == "succeeded" and record["output_bytes"] == len(BINARY)
    for tail in (record["output_tail"], listed["effects"][0]["output_tail"], awaited["done"][0]["output_tail"]):
        assert expected.endswith(tail) and len(tail.encode()) <= 4096 and tail.endswith("\u6587\ufffd")
    assert whole["data"] == expected and whole["eof"] is True
    for n, text in pieces.items():
        assert text == expected, f"read in steps of {n} bytes differs"
    for n, (text, cursor) in head.items():
        assert text == BINARY[:cursor].decode("utf-8", "replace"), f"read in steps of {n} bytes differs"
        assert text.count("\u20ac") >= 4 and text.count("\U0001f600") >= 4
    for n, text in last.items():
        assert text == BINARY[end:].decode("utf-8", "replace") == "\u00e9\u00e8\u4e2d\u6587" * 3 + "\ufffd", n
    for cursor, chunk in odd.items():
        assert isinstance(chunk["data"], str)
        if cursor >= len(BINARY):
            assert (chunk["data"], chunk["eof"]) == ("", True)


@pytest.mark.anyio
async def test_a_read_too_small_for_one_character_returns_exactly_that_character(settings):
    """max_bytes smaller than the character at the cursor: the whole character, and nothing after it."""
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py("print('a\u20acbc\U0001f600d', end='')"))
        euro = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=1, max_bytes=1)
        smile = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=6, max_bytes=2)
    assert (euro["data"], euro["cursor"]) == ("\u20ac", 4)
    assert (smile["data"], smile["cursor"]) == ("\U0001f600", 10)


# --- bugs that hypothesis found, one test each ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_run_id_holding_nul_is_refused_before_anything_is_written(settings):
    """NUL cannot reach a process (the run id becomes EFFECTD_RUN_ID): like `group` and `key`, refuse it."""
    async with connected(settings) as (_, client):
        result = await client.call_tool("dispatch_effect", {"command": ["/bin/true"], "run_id": "a\0b"})
        record = structured(result) if not result.is_error else None
    assert result.is_error, f"accepted, and the effect ended {record and (record['status'], record['error'])}"
    assert event_count(settings.db) == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "arguments",
    [
        {"command": ["/bin/true", "\ud800"]},
        {"command": ["/bin/true"], "stdin": "\udcff"},
        {"harness": "fake", "prompt": "\ud800"},
        {"command": ["/bin/true"], "cwd": "/tmp/\ud800"},
    ],
    ids=["argv", "stdin", "prompt", "cwd"],
)
async def test_a_string_that_is_not_valid_unicode_is_refused_before_anything_is_written(settings, arguments):
    """Reachable in process only (the Python API, in-memory clients): JSON transports refuse lone surrogates."""
    async with connected(settings, harnesses={**settings.harnesses, "fake": FAKE}) as (_, client):
        result = await client.call_tool("dispatch_effect", arguments)
        message = text_of(result)
        listing = await client.call_tool("list_effects", {})
    assert not listing.is_error, f"one such effect breaks list_effects for everyone: {text_of(listing)}"
    assert result.is_error and "Error executing tool dispatch_effect" != message.strip(), message
    assert event_count(settings.db) == 0


@pytest.mark.anyio
async def test_a_refused_dispatch_does_not_set_its_groups_concurrency_cap(settings, tmp_path):
    """A rejected call changes nothing: a cap named by a refused dispatch must not throttle the group."""
    release = tmp_path / "release"
    block = "import os, sys, time\nprint('up', flush=True)\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)"
    async with connected(settings) as (_, client):
        refused = await client.call_tool(
            "dispatch_effect",
            {"command": ["/bin/true"], "group": "g", "group_max_concurrency": 1, "depends_on": ["eff_nosuch"]},
        )
        assert refused.is_error
        ids = [
            (await call(client, "dispatch_effect", command=py(block, str(release)), group="g", background=True))[
                "effect_id"
            ]
            for _ in range(2)
        ]
        try:
            with anyio.fail_after(3):
                for effect_id in ids:
                    text, cursor = "", 0
                    while "up" not in text:
                        chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=2)
                        text, cursor = text + chunk["data"], chunk["cursor"]
            both_ran = True
        except TimeoutError:
            both_ran = False
        release.touch()
        await call(client, "await_group", effect_ids=ids, timeout_s=20)
    assert both_ran, "the refused dispatch's group_max_concurrency=1 kept the second effect queued"


# --- junk on the stdio wire --------------------------------------------------------------------------


def rpc(request_id: int, tool: str, arguments: Any) -> bytes:
    params = {"name": tool, "arguments": arguments}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()


@pytest.mark.anyio
async def test_junk_on_the_stdio_wire_is_answered_or_dropped_and_the_server_keeps_serving(tmp_path):
    db = tmp_path / "j.db"
    dispatch = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"dispatch_effect","arguments":%s}}'
    refused = {
        2: dispatch % (2, b'{"command":["/bin/true"],"timeout_s":NaN}'),
        3: dispatch % (3, b'{"command":["/bin/true"],"grace_s":-Infinity}'),
        4: dispatch % (4, b'{"command":["/bin/true"],"idle_timeout_s":Infinity}'),
        5: dispatch % (5, b'{"command":["/bin/true"],"label":"' + b"x" * (4 * 1024 * 1024) + b'"}'),
        6: dispatch % (6, b'"not an object"'),
        7: b'{"jsonrpc":"2.0","id":7,"method":"tools/call"}',
        8: rpc(8, "no_such_tool", {}),
        9: dispatch % (9, b'{"command":["/bin/true"],"cwd":"/proc/self/root/no/such"}'),
    }
    junk = [b"not json at all", b"\xff\xfe\x00\x80 not utf-8", b"[" * 100_000, b"{}", b'{"jsonrpc":"2.0"}', b""]
    junk.append(dispatch % (10, b'{"command":["/bin/true"],"label":"\\ud800"}'))  # a lone surrogate: unparseable
    initialize = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    process = await anyio.open_process(
        [effectd_bin(), "serve", "--db", str(db), "--allow-any-command"],
        cwd=str(tmp_path),
        env={**os.environ},
    )
    assert process.stdin is not None and process.stdout is not None
    answers: dict[int, dict] = {}
    buffer = b""

    async def send(line: bytes) -> None:
        assert process.stdin is not None
        await process.stdin.send(line + b"\n")

    async def answer(request_id: int) -> dict:
        nonlocal buffer
        assert process.stdout is not None
        with anyio.fail_after(30):
            while request_id not in answers:
                *lines, buffer = (buffer + await process.stdout.receive()).split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "id" in message:
                        answers[message["id"]] = message
        return answers[request_id]

    try:
        await send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize}).encode())
        await answer(1)
        await send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        for line in [*junk, *refused.values()]:
            await send(line)
        await send(rpc(98, "list_harnesses", {}))
        harnesses = await answer(98)
        for request_id in refused:
            await answer(request_id)
        written = event_count(db) if db.exists() else 0
        await send(rpc(99, "dispatch_effect", {"command": ["/bin/true"]}))
        ran = await answer(99)
    finally:
        await process.stdin.aclose()
        with anyio.fail_after(10):
            await process.aclose()  # waits, and closes stdout and stderr: none left for the GC to warn of
    assert "harnesses" in harnesses["result"]["structuredContent"]
    for request_id in refused:
        message = answers[request_id]
        assert "error" in message or message["result"]["isError"] is True, message
    assert written == 0, f"refused calls wrote {written} events"
    assert ran["result"]["structuredContent"]["status"] == "succeeded"
    assert process.returncode == 0
