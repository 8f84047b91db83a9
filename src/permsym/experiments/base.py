"""What an experiment is: units of work with a config, tidy records, a stated criterion, a verdict."""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALES = ("tiny", "quick", "full")
VERDICTS = ("supported", "not supported", "inconclusive")


def file_stem(name: str) -> str:
    """A file-system-safe stem for an experiment name (names are free text in the report)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def config_key(experiment: str, config: dict[str, Any], version: int = 1) -> str:
    """Stable hash of an experiment unit's config and the experiment's version (the cache key)."""
    blob = json.dumps({"experiment": experiment, "config": config, "version": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Verdict:
    """A claim, the criterion stated before running, and what the numbers say."""

    experiment: str
    claim: str
    criterion: str
    verdict: str
    evidence: dict[str, Any]

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Verdict: verdict must be one of {VERDICTS}; got {self.verdict!r}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "claim": self.claim,
            "criterion": self.criterion,
            "verdict": self.verdict,
            "evidence": self.evidence,
        }


class Experiment(ABC):
    """One claim or remedy of the paper made measurable.

    Subclasses set ``name``, ``title``, ``claim`` (the paper's statement), ``criterion``
    (decided before running) and implement the four methods below; ``version`` is part of
    the cache key. ``run_unit`` must be
    deterministic for a config (seeds are part of it) and return JSON-able records
    ``{"metric": str, "value": number, ...}``.
    """

    name: str
    title: str
    claim: str
    criterion: str
    version: int = 1  # bump when run_unit changes what a config computes: old cache entries are ignored

    @abstractmethod
    def units(self, scale: str) -> list[dict[str, Any]]:
        """The configs of the units to run at ``scale`` (tiny, quick or full)."""

    @abstractmethod
    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one unit; return its records."""

    @abstractmethod
    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        """Judge the claim from all records against ``criterion``."""

    @abstractmethod
    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        """Write one PNG figure (labelled axes and units) to ``path``."""

    def describe(self, scale: str) -> str:
        """What was run, in one paragraph of plain text (escaped by the report)."""
        return f"{len(self.units(scale))} units at scale {scale!r}."


def combine_decisions(decisions: list[str]) -> str:
    """One verdict from per-case decisions: any 'not supported' wins, all 'supported' is
    'supported', anything else (or nothing) is 'inconclusive'."""
    if "not supported" in decisions:
        return "not supported"
    if decisions and all(d == "supported" for d in decisions):
        return "supported"
    return "inconclusive"


def select(records: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    """Records whose fields equal every ``where`` item."""
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]
