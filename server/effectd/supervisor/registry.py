"""The effects the supervisor knows: those in memory, and the rest read back from the journal on demand.

Memory stays bounded: past `keep_finished` finished effects, the oldest are dropped (the journal and
the output file still answer for them; whoever holds one keeps a valid object).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from effectd.errors import UnknownEffectError
from effectd.journal.store import Journal
from effectd.model.records import EffectRecord
from effectd.supervisor.effect import Effect
from effectd.supervisor.output import OutputLog

KEEP_FINISHED = 4096


class Registry:
    def __init__(
        self,
        journal: Journal,
        output_dir: Path,
        output_limit_bytes: int,
        adopt: Callable[[Effect], Effect],
        keep_finished: int = KEEP_FINISHED,
    ) -> None:
        self._journal = journal
        self.output_dir = output_dir
        self._output_limit = output_limit_bytes
        self._adopt = adopt
        self._keep_finished = keep_finished
        self._effects: dict[str, Effect] = {}
        # Those of `_effects` not seen terminal yet: what `live` and `followed` look at (a server keeps up
        # to `keep_finished` finished effects, and the journal's follower asks every 0.1 s).
        self._open: dict[str, Effect] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def log_path(self, effect_id: str) -> Path:
        return self.output_dir / f"{effect_id}.log"

    def result_path(self, effect_id: str) -> Path:
        return self.output_dir / f"{effect_id}.result.json"

    def new_output(self, effect_id: str) -> OutputLog:
        return OutputLog(self.log_path(effect_id), self._output_limit)

    def existing_output(self, effect_id: str, *, closed: bool = True) -> OutputLog:
        output = OutputLog.existing(self.log_path(effect_id), self._output_limit, closed=closed)
        output.truncated = 0 < output.size >= self._output_limit
        return output

    def adopt(self, effect: Effect) -> Effect:
        """Wires an effect loaded from the journal to the supervisor (stall flag, change feed)."""
        return self._adopt(effect)

    def add(self, effect: Effect) -> None:
        self._effects[effect.effect_id] = effect
        if effect.terminal:
            self.remember_finished(effect)
        else:
            self._open[effect.effect_id] = effect

    def loaded(self, effect_id: str) -> Effect | None:
        """The effect if it is in memory (None: the journal answers for it)."""
        return self._effects.get(effect_id)

    def drop(self, effect_ids: Iterable[str]) -> None:
        """Forgets finished effects (they left the journal: `effectd prune --journal`)."""
        for effect_id in effect_ids:
            effect = self._effects.get(effect_id)
            if effect is not None and effect.terminal:
                del self._effects[effect_id]
                self._open.pop(effect_id, None)
                self._finished.pop(effect_id, None)

    def live(self) -> list[Effect]:
        """The effects this server drives that are not terminal."""
        return [e for e in self._still_open() if e.local]

    def followed(self) -> list[Effect]:
        """The effects of other servers in memory (polled, awaited, depended on) that are not terminal."""
        return [e for e in self._still_open() if not e.local]

    def _still_open(self) -> list[Effect]:
        """The effects in memory not terminal; forgets those that have ended (an end is for good)."""
        ended = [effect_id for effect_id, effect in self._open.items() if effect.terminal]
        for effect_id in ended:
            del self._open[effect_id]
        return list(self._open.values())

    def peek(self, effect_id: str) -> Effect | None:
        """The effect if it is in memory (never read from the journal)."""
        return self._effects.get(effect_id)

    async def get(self, effect_id: str) -> Effect:
        """The effect with this id, from memory or the journal; UnknownEffectError names an unknown id."""
        return (await self.get_many([effect_id]))[0]

    async def get_many(self, effect_ids: Sequence[str]) -> list[Effect]:
        """The effects with these ids, in order; those not in memory are read from the journal together."""
        found = {i: self._effects[i] for i in effect_ids if i in self._effects}
        missing = [i for i in dict.fromkeys(effect_ids) if i not in found]
        if missing:
            rows = await self._journal.effects(missing)
            unknown = [i for i in missing if i not in rows]
            if len(unknown) == 1 and len(effect_ids) == 1:
                raise UnknownEffectError(f"unknown effect id {unknown[0]!r}: no effect with this id in the journal")
            if unknown:
                raise UnknownEffectError(f"unknown effect ids: {', '.join(unknown)}")
            for effect_id, row in rows.items():
                effect = self._effects.get(effect_id)  # loaded by someone else meanwhile?
                if effect is None:
                    # Another server's effect still running has output to come: its log is not closed.
                    output = self.existing_output(effect_id, closed=row["terminal_seq"] is not None)
                    effect = self.adopt(Effect.from_row(row, output))
                    self.add(effect)  # may drop older finished ones: `found` keeps these
                found[effect_id] = effect
        return [found[i] for i in effect_ids]

    def records(self, rows: Iterable[dict[str, Any]]) -> list[EffectRecord]:
        """Records for projection rows, live state taking precedence over the stored row."""
        records = []
        for row in rows:
            effect = self._effects.get(row["effect_id"])
            if effect is None:
                effect = self.adopt(Effect.from_row(row, self.existing_output(row["effect_id"])))
            records.append(effect.record())
        return records

    def remember_finished(self, effect: Effect) -> None:
        self._open.pop(effect.effect_id, None)
        self._finished[effect.effect_id] = None
        while len(self._finished) > self._keep_finished:
            old, _ = self._finished.popitem(last=False)
            if (dropped := self._effects.get(old)) is not None and dropped.terminal:
                del self._effects[old]
                self._open.pop(old, None)
