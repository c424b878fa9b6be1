"""PS3.15 Table E.1-1 as data: which action the Basic Profile (and each option) takes on
each attribute. The table ships beside this module (`table_e1_1.tsv`), as the standard
gives it; `Profile.action` resolves what to do with one tag under the chosen options.

Actions (PS3.15 E.1.1): D dummy value, Z zero length (or a dummy), X remove, K keep,
C clean, U replace a UID consistently. A compound action (X/Z, X/D, Z/D, X/Z/D, X/Z/U*)
lets the implementation choose by the attribute's type in the IOD; without the IOD at
hand we take the one that keeps the attribute present (D over Z over X), so a Type 1 or 2
attribute never goes missing and the object stays valid. `U*` (a sequence of references):
the sequence is kept and the UIDs inside it are replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

OPTIONS = (
    "safe_private",
    "uids",
    "device_id",
    "institution_id",
    "patient_chars",
    "full_dates",
    "modified_dates",
    "clean_descriptors",
    "clean_structured",
    "clean_graphics",
)
# The options this product implements, as the request names them.
SUPPORTED_OPTIONS = ("modified_dates", "clean_descriptors")


@dataclass(frozen=True)
class Rule:
    tag: str  # 8 lowercase hex digits, `x` for any digit (e.g. 60xx3000)
    name: str
    basic: str
    options: dict[str, str]  # option -> action, only the options that name the attribute

    def matches(self, tag: int) -> bool:
        text = f"{tag:08x}"
        return all(p in ("x", c) for p, c in zip(self.tag, text, strict=True))


def simple(action: str) -> str:
    """One action from a compound one (see the module docstring)."""
    if "U" in action:
        return "U"
    for choice in ("D", "Z", "X"):
        if choice in action:
            return choice
    return action


@dataclass(frozen=True)
class Profile:
    exact: dict[int, Rule]
    masked: tuple[Rule, ...]

    @property
    def rules(self) -> list[Rule]:
        return [*self.exact.values(), *self.masked]

    def rule(self, tag: int) -> Rule | None:
        found = self.exact.get(tag)
        if found is not None:
            return found
        return next((r for r in self.masked if r.matches(tag)), None)

    def action(self, tag: int, options: frozenset[str]) -> str | None:
        """The single action for `tag`, None when the table does not list it (kept)."""
        rule = self.rule(tag)
        if rule is None:
            return None
        for option in SUPPORTED_OPTIONS:  # dates first: no attribute is in both columns
            if option in options and option in rule.options:
                return rule.options[option]
        return simple(rule.basic)


@cache
def table() -> Profile:
    """The table, parsed once per process."""
    text = resources.files("libs.deid").joinpath("table_e1_1.tsv").read_text("utf-8")
    exact: dict[int, Rule] = {}
    masked: list[Rule] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        tag, basic, *opts, name = line.split("\t")
        if len(tag) != 8:  # "Private Attributes": handled as a rule of its own
            continue
        rule = Rule(
            tag, name, basic, {o: a for o, a in zip(OPTIONS, opts, strict=True) if a != "-"}
        )
        if "x" in tag:
            masked.append(rule)
        else:
            exact[int(tag, 16)] = rule
    return Profile(exact, tuple(masked))
