"""What ``doctor`` prints: sections of lines, the warnings and refusals among them, the verdict.

Apart from the readings that fill it (``doctor``, ``doctor_columns``, ``provider_check``), so
each of them imports the report and none imports another for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass
class DoctorReport:
    """Sections of lines to print; the warnings and refusals among them; the verdict."""

    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    now: dt.datetime | None = None  # naive UTC: the "now" of every figure in the report

    @property
    def acts_wrongly(self) -> bool:
        """Whether a run with this mapping would act wrongly (the CLI exits 2)."""
        return bool(self.refusals)

    @property
    def verdict(self) -> str:
        if self.refusals:
            return (
                f"verdict: REFUSED, the mapping would act wrongly ({len(self.refusals)} "
                f"problem(s), first: {self.refusals[0]}); do not switch the schedule on"
            )
        if self.warnings:
            return f"verdict: ready, with {len(self.warnings)} warning(s) to read first"
        return "verdict: ready, the schedule can be switched on"

    def lines(self) -> list[str]:
        out: list[str] = []
        for title, lines in self.sections:
            out.append(f"== {title}")
            out.extend(f"  {line}" for line in lines)
        out.append(self.verdict)
        return out

    def _section(self, title: str) -> list[str]:
        lines: list[str] = []
        self.sections.append((title, lines))
        return lines

    def _warn(self, lines: list[str], text: str) -> None:
        self.warnings.append(text)
        lines.append(f"WARNING: {text}")

    def _refuse(self, lines: list[str], text: str) -> None:
        self.refusals.append(text)
        lines.append(f"REFUSED: {text}")
