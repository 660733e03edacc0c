"""Harness profiles (how to launch a coding-agent CLI) and parsers (how to read its streaming output)."""

from effectd.harness.parsers import (
    MISSING_FINAL_EVENT,
    PARSERS,
    HarnessOutcome,
    HarnessProgress,
    Parser,
    make_parser,
    usage_tokens,
)
from effectd.harness.profiles import BUILTIN_PROFILES, HarnessProfile, profile_from_config

__all__ = [
    "BUILTIN_PROFILES",
    "MISSING_FINAL_EVENT",
    "PARSERS",
    "HarnessOutcome",
    "HarnessProfile",
    "HarnessProgress",
    "Parser",
    "make_parser",
    "profile_from_config",
    "usage_tokens",
]
