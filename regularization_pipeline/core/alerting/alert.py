"""An alert and what a sensor observed: the words every channel and format shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from regularization_pipeline.core.redaction import redact

FIRING = "firing"
RESOLVED = "resolved"
SOURCE = "regularization_pipeline"
# PagerDuty's severities; the generic JSON event and Alertmanager's label use the same words.
SEVERITIES = ("critical", "error", "warning", "info")


def incident_key(incident: str, shop: str | None) -> str:
    """The name an incident is kept and deduplicated under: the condition alone in a single-shop
    installation (the keys incidents had before shops, so an open one is never reopened under a
    new key), ``<shop>/<condition>`` with a shops file, so each shop's incident is its own."""
    return incident if shop is None else f"{shop}/{incident}"


@dataclass(frozen=True)
class Observation:
    """What a sensor saw on this tick: whether the incident's condition holds, and why (ids and counts).

    ``size`` is how big the incident is (dead events, held orders): its growth
    re-notifies an open incident. ``run_id`` links the message to the run. ``shop`` is the
    shop of the shops file it concerns (None: the single shop).
    """

    incident: str
    firing: bool
    detail: str
    size: float | None = None
    severity: str = "error"
    run_id: str | None = None
    shop: str | None = None

    @property
    def key(self) -> str:
        return incident_key(self.incident, self.shop)

    def __post_init__(self) -> None:
        # The detail is kept in the sensor's cursor and sent to every channel: redacted once, here.
        object.__setattr__(self, "detail", redact(self.detail))


@dataclass(frozen=True)
class Alert:
    incident: str
    state: str  # FIRING or RESOLVED
    detail: str
    severity: str = "error"
    run_id: str | None = None
    at: float = 0.0  # when it was raised (epoch seconds); 0 in messages stored by older versions
    shop: str | None = None  # None in a single-shop installation and in older stored messages

    def __post_init__(self) -> None:
        # Every payload (Slack, JSON, PagerDuty, Alertmanager, e-mail) is built from this detail.
        object.__setattr__(self, "detail", redact(self.detail))

    @property
    def key(self) -> str:
        return incident_key(self.incident, self.shop)

    @property
    def subject(self) -> str:
        return f"[{SOURCE}] {self.state.upper()}: {self.key}"

    @property
    def text(self) -> str:
        return f"{self.subject}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
