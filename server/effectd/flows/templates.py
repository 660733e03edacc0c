"""Step templates: `{{steps.ID.output}}`, `{{steps.ID.result}}`, `{{steps.ID.result.FIELD}}`, and for a
step with isolation "worktree" `{{steps.ID.workspace.branch}}` and `{{steps.ID.workspace.head_commit}}`
(also `base_commit`).

Parsing them, checking at submit time that each names a step its step needs (directly or
transitively), and filling them from the outputs and results of those steps when the step starts.
The functions are pure: the flow manager fetches the steps' outputs and results and passes them in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from effectd.errors import InvalidRequestError
from effectd.flows.models import Step
from effectd.harness.profiles import HarnessProfile
from effectd.model.arguments import EffectArguments
from effectd.model.records import EffectSpec
from effectd.model.specs import check_argv

_OPENING = re.compile(r"\{\{\s*steps\.")
_TEMPLATE = re.compile(
    r"\{\{\s*steps\.(?P<step>[A-Za-z0-9_-]+)\.(?P<what>output|result|workspace)(?P<path>(?:\.[^.\s{}]+)*)\s*\}\}"
)
_FORMS = (
    "{{steps.ID.output}}, {{steps.ID.result}}, {{steps.ID.result.FIELD}}, {{steps.ID.workspace.branch}} "
    "or {{steps.ID.workspace.head_commit}}"
)
WORKSPACE_FIELDS = ("branch", "head_commit", "base_commit")


@dataclass(frozen=True)
class TemplateRef:
    """One `{{steps.ID.output|result[.FIELD...]}}` in a step's text."""

    step: str
    what: str
    path: tuple[str, ...]


def _ref(match: re.Match[str]) -> TemplateRef:
    return TemplateRef(match["step"], match["what"], tuple(match["path"].split(".")[1:]))


def parse_templates(text: str, where: str) -> list[TemplateRef]:
    """The templates in `text`; InvalidRequestError for a `{{steps.` that is not one of the allowed forms."""
    refs = []
    for opening in _OPENING.finditer(text):
        match = _TEMPLATE.match(text, opening.start())
        if match is None:
            snippet = text[opening.start() : opening.start() + 60]
            raise InvalidRequestError(f"{where}: malformed template {snippet!r}; use {_FORMS}")
        ref = _ref(match)
        if ref.what == "output" and ref.path:
            raise InvalidRequestError(f"{where}: {match[0]!r}: `output` is text and has no fields; use {_FORMS}")
        if ref.what == "workspace" and (len(ref.path) != 1 or ref.path[0] not in WORKSPACE_FIELDS):
            raise InvalidRequestError(
                f"{where}: {match[0]!r}: a workspace template names one of {', '.join(WORKSPACE_FIELDS)}; use {_FORMS}"
            )
        refs.append(ref)
    return refs


def templated_texts(arguments: EffectArguments) -> list[tuple[str, str]]:
    """The texts of a step's arguments that may hold templates, each with its name."""
    texts = [("prompt", arguments.prompt), ("stdin", arguments.stdin)]
    texts += [(f"command[{i}]", text) for i, text in enumerate(arguments.command or [])]
    texts += [(f"args[{i}]", text) for i, text in enumerate(arguments.args or [])]
    return [(name, text) for name, text in texts if text is not None]


def spec_texts(spec: EffectSpec) -> list[str]:
    """The texts of a step's spec that may hold templates."""
    texts = [*spec.args, *(spec.command if spec.kind == "command" else [])]
    return texts + [text for text in (spec.prompt, spec.stdin) if text is not None]


def check_templates(steps: Sequence[Step], ancestors: Mapping[str, frozenset[str]]) -> dict[str, bool]:
    """Checks every template names a step its step needs; returns which steps hold templates."""
    templated = {}
    isolated = {step.id for step in steps if step.isolation == "worktree"}
    for step in steps:
        refs = []
        for name, text in templated_texts(step):
            where = f"step {step.id!r} {name}"
            for ref in parse_templates(text, where):
                if ref.step not in ancestors:
                    raise InvalidRequestError(f"{where}: the template names unknown step {ref.step!r}")
                if ref.step not in ancestors[step.id]:
                    raise InvalidRequestError(
                        f"{where}: the template names step {ref.step!r}, which step {step.id!r} does not need "
                        f"(directly or transitively), so it may not have run yet; add {ref.step!r} to its `needs`"
                    )
                if ref.what == "workspace" and ref.step not in isolated:
                    raise InvalidRequestError(
                        f'{where}: the template names the workspace of step {ref.step!r}, which has isolation "none"; '
                        f'give step {ref.step!r} isolation "worktree"'
                    )
                refs.append(ref)
        templated[step.id] = bool(refs)
    return templated


def fill(
    text: str,
    outputs: Mapping[str, str],
    results: Mapping[str, Any],
    workspaces: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> str:
    """`text` with its templates filled: `outputs` holds the output text of every step named with
    `.output`, `results` the result of every step named with `.result`, `workspaces` the workspace of
    every step named with `.workspace`. A string field goes in as it is, anything else as JSON;
    ValueError names a field the result does not have."""

    def value(match: re.Match[str]) -> str:
        ref = _ref(match)
        if ref.what == "output":
            return outputs[ref.step]
        if ref.what == "workspace":
            workspace = (workspaces or {}).get(ref.step)
            picked = workspace.get(ref.path[0]) if workspace else None
            if picked is None:
                raise ValueError(f"template {match[0]}: step {ref.step} has no workspace {ref.path[0]}")
            return str(picked)
        if not ref.path:
            return json.dumps(results[ref.step], ensure_ascii=False)
        picked = _result_field(ref.step, results[ref.step], ref.path)
        return picked if isinstance(picked, str) else json.dumps(picked, ensure_ascii=False)

    return _TEMPLATE.sub(value, text)


def fill_step(
    spec: EffectSpec,
    harnesses: Mapping[str, HarnessProfile],
    outputs: Mapping[str, str],
    results: Mapping[str, Any],
    workspaces: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> tuple[list[str], str | None]:
    """The argv and stdin of a templated step, its templates filled (see `fill`).

    ValueError when a template cannot be filled or the step's harness profile is gone;
    InvalidRequestError when the filled argv cannot be run (`specs.check_argv`).
    """

    def filled(text: str) -> str:
        return fill(text, outputs, results, workspaces)

    stdin = filled(spec.stdin) if spec.stdin is not None else None
    if spec.kind == "harness":
        profile = harnesses.get(spec.harness or "")
        if profile is None:
            raise ValueError(f"harness profile {spec.harness!r} is no longer configured")
        prompt = filled(spec.prompt or "")
        argv = profile.build_argv(prompt, [filled(arg) for arg in spec.args])
        if stdin is None and spec.prompt_via == "stdin":
            stdin = prompt
    else:
        argv = [filled(arg) for arg in spec.command]
    check_argv(argv, "the command line after filling its templates")
    return argv, stdin


def _result_field(step: str, result: Any, path: Sequence[str]) -> Any:
    value = result
    for depth, name in enumerate(path):
        where = ".".join(path[: depth + 1])
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            raise ValueError(f"template {{{{steps.{step}.result.{where}}}}}: step {step}'s result has no {where!r}")
    return value
