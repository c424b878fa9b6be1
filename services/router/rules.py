"""Routing rules: which stored instance goes to which DICOM destination.

The file (`ROUTER_RULES_FILE`, YAML) lists destinations and rules:

    destinations:
      - {name: pacs, ae_title: MAINPACS, host: 10.0.0.5, port: 104, verify: c-find}
    rules:
      - name: ct-and-mr-to-pacs
        match: {modality: [CT, MR], calling_ae: "CT_*"}
        to: [pacs]

A rule matches when every criterion it names matches (AND); a criterion is one pattern or a
list (OR) of shell-style patterns (`*`, `?`, `[...]`), compared without regard to case.
Criteria: `calling_ae` (instances received by our C-STORE SCP only), `modality`,
`sop_class` (UID), `study_description`, `source` (`dicom`, `nas`, `api`, `orthanc`, `iso`,
`pacs`, ... or the full source such as `pacs:main`). An instance goes to the union of the
destinations of the rules it matches, once per destination.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from libs.contracts.events import InstanceStored

NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


Patterns = Annotated[list[str], BeforeValidator(_as_list)]


class Destination(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    verify: Literal["c-find", "none"] = Field(
        default="none",
        description="How an instance in doubt (sent, not recorded: a crash) is settled: a "
        "C-FIND of it at the destination, or it is sent again.",
    )
    max_attempts: int | None = Field(default=None, ge=1, description="ROUTER_MAX_ATTEMPTS")
    tls: bool = Field(default=False, description="DICOM over TLS (ROUTER_TLS_CA/CERT/KEY)")


class Match(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    calling_ae: Patterns = Field(default_factory=list)
    modality: Patterns = Field(default_factory=list)
    sop_class: Patterns = Field(default_factory=list)
    study_description: Patterns = Field(default_factory=list)
    source: Patterns = Field(default_factory=list)


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME)
    match: Match = Field(default_factory=Match)
    to: list[str] = Field(min_length=1)


class RoutingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    destinations: list[Destination] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> RoutingConfig:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique")
        rules = [r.name for r in self.rules]
        if len(set(rules)) != len(rules):
            raise ValueError("rule names must be unique")
        for rule in self.rules:
            unknown = [n for n in rule.to if n not in names]
            if unknown:
                raise ValueError(f"rule {rule.name!r} names unknown destinations: {unknown}")
        return self


def load_rules(path: Path) -> RoutingConfig:
    """Read and validate the rules file; ValueError naming the file and the problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read ROUTER_RULES_FILE {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"ROUTER_RULES_FILE {path} is not valid YAML: {exc}") from None
    try:
        return RoutingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"ROUTER_RULES_FILE {path}: {problems}") from None


@dataclass(frozen=True)
class Facts:
    """What rules look at, for one stored instance."""

    source: str
    calling_ae: str
    modality: str
    sop_class: str
    study_description: str

    @classmethod
    def of(cls, event: InstanceStored) -> Facts:
        kind, _, rest = event.source.partition(":")
        h = event.header
        return cls(
            source=event.source,
            calling_ae=rest if kind == "dicom" else "",
            modality=h.series.modality,
            sop_class=h.instance.sop_class_uid,
            study_description=h.study.study_description,
        )


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern.strip().casefold()))


def _any(patterns: list[str], *values: str) -> bool:
    """No pattern: anything matches. Otherwise one of the values matches one pattern (an
    empty value matches only a pattern that matches the empty string, such as `*`)."""
    if not patterns:
        return True
    folded = [v.strip().casefold() for v in values]
    return any(_compiled(p).fullmatch(v) for p in patterns for v in folded)


def matches(match: Match, facts: Facts) -> bool:
    received = bool(facts.calling_ae)  # a calling AE criterion needs our SCP's instances
    return (
        (not match.calling_ae or (received and _any(match.calling_ae, facts.calling_ae)))
        and _any(match.modality, facts.modality)
        and _any(match.sop_class, facts.sop_class)
        and _any(match.study_description, facts.study_description)
        and _any(match.source, facts.source.partition(":")[0], facts.source)
    )


def route(config: RoutingConfig, facts: Facts) -> dict[str, str]:
    """Destination name -> the first rule that sends the instance there."""
    out: dict[str, str] = {}
    for rule in config.rules:
        if matches(rule.match, facts):
            for name in rule.to:
                out.setdefault(name, rule.name)
    return out
