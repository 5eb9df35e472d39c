"""CEL rules (`x-kubernetes-validations`) of the CRD schemas, evaluated with cel-python.

Policy, the same for every rule of every schema in deploy/check/schemas:
* a rule is evaluated wherever its field is present in an object, on the defaulted object,
  with `self` bound to the field's value, as the API server does on create;
* a transition rule (one that names `oldSelf`) is only evaluated by the API server on update,
  against the stored object; on create it does not run, so it is not evaluated here either,
  and the summary lists it as "transition (on update only)";
* a rule cel-python cannot evaluate (it fails to parse, or calls a function cel-python lacks,
  such as the Kubernetes CEL library's quantity() or the optional-field syntax `?.`) is
  "unsupported": listed in the summary, and a FAILURE wherever its field is present, because
  the check cannot show the object passes it. A rule that evaluates to an error on our data
  (e.g. a missing key) fails as it would on the API server;
* `optionalOldSelf: true` rules run on create with no old value; cel-python has no optional
  types, so they count as unsupported.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import celpy
from celpy import celtypes

from .crd import CrdSchema

OLD_SELF = re.compile(r"\boldSelf\b")


@dataclass
class Rule:
    """One rule at one schema path of one kind."""

    kind: str
    path: str
    rule: str
    message: str
    transition: bool
    program: object | None = None
    unsupported: str | None = None


@dataclass
class Stats:
    """What happened to the rules of each kind, for the summary."""

    rules: dict[str, list[Rule]] = field(default_factory=lambda: defaultdict(list))
    evaluated: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))

    def summary(self) -> list[str]:
        lines = []
        for kind, rules in sorted(self.rules.items()):
            ev = [r for r in rules if not r.transition and not r.unsupported]
            tr = [r for r in rules if r.transition]
            un = [r for r in rules if r.unsupported]
            used = [r for r in ev if self.evaluated.get((r.kind, r.path, r.rule))]
            lines.append(
                f"cel {kind}: {len(rules)} rules: {len(ev)} evaluable on create ({len(used)} had their field present "
                f"and were evaluated), {len(tr)} transition (on update only, not evaluated), {len(un)} unsupported"
            )
            for r in used:
                n = self.evaluated[(r.kind, r.path, r.rule)]
                lines.append(f"  evaluated x{n}: {r.path or '<root>'}: {r.rule}")
            for r in ev:
                if not self.evaluated.get((r.kind, r.path, r.rule)):
                    lines.append(f"  evaluable, field absent here: {r.path or '<root>'}: {r.rule}")
            for r in un:
                lines.append(f"  unsupported ({r.unsupported}): {r.path or '<root>'}: {r.rule}")
        return lines


class Evaluator:
    """Compiles every rule of the loaded schemas once and evaluates them on objects."""

    def __init__(self, schemas: dict[tuple[str, str], CrdSchema]):
        self.env = celpy.Environment()
        self.stats = Stats()
        self._by_node: dict[int, list[Rule]] = {}
        for s in schemas.values():
            self._collect(s.kind, s.raw, "")

    def _collect(self, kind: str, node: dict, path: str) -> None:
        rules = []
        for v in node.get("x-kubernetes-validations") or []:
            text = v["rule"]
            r = Rule(kind, path, " ".join(text.split()), v.get("message") or f"failed rule: {' '.join(text.split())}",
                     bool(OLD_SELF.search(text)))
            if v.get("optionalOldSelf"):
                r.unsupported = "optionalOldSelf"
            elif not r.transition:
                try:
                    r.program = self.env.program(self.env.compile(text))
                except Exception as e:  # noqa: BLE001 (cel-python raises several types)
                    r.unsupported = f"does not compile in cel-python: {type(e).__name__}"
            rules.append(r)
            self.stats.rules[kind].append(r)
        if rules:
            self._by_node[id(node)] = rules
        for k, sub in (node.get("properties") or {}).items():
            self._collect(kind, sub, f"{path}.{k}" if path else k)
        if isinstance(node.get("items"), dict):
            self._collect(kind, node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            self._collect(kind, node["additionalProperties"], path + "{}")

    def violations(self, s: CrdSchema, obj: dict) -> list[tuple[list, str]]:
        """Returns (path, message) for each rule the (defaulted) object breaks or that could
        not be evaluated."""
        out: list[tuple[list, str]] = []
        self._walk(obj, s.raw, [], out)
        return out

    def _walk(self, value, node: dict, path: list, out: list) -> None:
        for r in self._by_node.get(id(node), []):
            if r.transition:
                continue
            self.stats.evaluated[(r.kind, r.path, r.rule)] += 1
            if r.unsupported:
                out.append((path, f"CEL rule not evaluable offline ({r.unsupported}): {r.rule}"))
                continue
            res = self._eval(r, value)
            if res is not True:
                out.append((path, res if isinstance(res, str) else f"{r.message} (CEL: {r.rule})"))
        if isinstance(value, dict):
            props = node.get("properties") or {}
            for k, v in value.items():
                if k in props:
                    self._walk(v, props[k], path + [k], out)
                elif isinstance(node.get("additionalProperties"), dict):
                    self._walk(v, node["additionalProperties"], path + [k], out)
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, v in enumerate(value):
                self._walk(v, node["items"], path + [i], out)

    def _eval(self, r: Rule, value) -> bool | str:
        """True when the rule holds; False when it does not; a message when it errs."""
        try:
            res = r.program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # noqa: BLE001
            return self._error(r, e)
        if isinstance(res, celpy.CELEvalError):
            return self._error(r, res)
        if isinstance(res, celtypes.BoolType):
            return bool(res)
        return f"CEL rule did not give a bool ({type(res).__name__}): {r.rule}"

    @staticmethod
    def _error(r: Rule, e: Exception) -> str:
        text = str(e.args[0] if getattr(e, "args", None) else e)
        if "undeclared reference" in text or "no such overload" in text.lower() or "unsupported" in text.lower():
            r.unsupported = r.unsupported or "a function or syntax cel-python lacks"
            return f"CEL rule not evaluable offline ({text.split('(in activation')[0].strip()}): {r.rule}"
        return f"error evaluating CEL rule ({text.split('(in activation')[0].strip()}): {r.rule}"
