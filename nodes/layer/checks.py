"""Widget values checked by type and by range, against the node's own schema, and lists of values with a bound.

An API prompt can send anything: ComfyUI 0.3.75 converts a widget value with ``bool()`` / ``int()`` / ``float()``
before any node sees it (so ``"false"`` becomes True and 2.7 becomes 2), checks neither V3 combo options nor NaN,
and lets a list of 10,000 values through.  ``widget_problem`` is the one rule for what a widget accepts; the base
node applies it to every input of every pack node before its body runs, and ``prompt_types`` applies its type half
to the prompt before ComfyUI converts anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from comfy_api.latest import io


@dataclass(frozen=True)
class ValueList:
    """What a comma-separated list widget (a sweep) holds: numbers in [low, high], whole ones if ``whole``, at most
    ``max_count`` of them (the work bound: one run per value); empty text means no list when ``optional``."""

    low: float
    high: float
    max_count: int
    example: str
    whole: bool = False
    optional: bool = True

    def describe(self) -> str:
        kind = "whole numbers" if self.whole else "numbers"
        return f"at most {self.max_count} comma-separated {kind} in [{self.low:g}, {self.high:g}]; empty entries are refused"


def list_spec(spec) -> ValueList | None:
    return getattr(spec, "hspace_values", None)


def type_problem(spec, value) -> str | None:
    """Why ``value`` is not of the widget's type (None when it is).  Booleans must be real booleans, whole numbers
    real integers (not floats or booleans), numbers real numbers (not strings or booleans), texts strings."""
    name = spec.id
    if isinstance(spec, io.Boolean.Input):
        if type(value) is not bool:
            return (f"{name} is {value!r} ({type(value).__name__}), not a boolean: send true or false (a JSON boolean; "
                    f"a string such as \"false\" is not read as false).")
    elif isinstance(spec, io.Int.Input):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} is {value!r} ({type(value).__name__}), not a whole number: send an integer{_range(spec)}."
    elif isinstance(spec, io.Float.Input):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} is {value!r} ({type(value).__name__}), not a number: send a number{_range(spec)}."
        if not math.isfinite(value):
            return f"{name} is {value}; set it to a number in [{spec.min}, {spec.max}]."
    elif isinstance(spec, io.String.Input):
        if not isinstance(value, str):
            return f"{name} is {value!r} ({type(value).__name__}), not a text: send a string."
    return None


def widget_problem(spec, value) -> str | None:
    """Why the widget ``spec`` cannot take ``value`` (None when it can): type, finiteness, [min, max], combo
    options, and a list widget's entries and length."""
    problem = type_problem(spec, value)
    if problem is not None:
        return problem
    try:
        if isinstance(spec, io.Combo.Input):
            check_option(spec.id, value, spec.options)
        elif isinstance(spec, (io.Float.Input, io.Int.Input)):
            check_number(spec.id, value, spec.min, spec.max)
        elif list_spec(spec) is not None:
            parse_list(value, spec.id, list_spec(spec))
    except ValueError as error:
        return str(error)
    return None


def _range(spec) -> str:
    return f" in [{spec.min}, {spec.max}]" if spec.min is not None and spec.max is not None else ""


def check_option(name: str, value, options) -> None:
    if value not in options:
        shown = ", ".join(map(repr, options[:20])) + (f" … ({len(options)} in all)" if len(options) > 20 else "")
        raise ValueError(f"{name} is {value!r}, which is not one of its options; choose one of: {shown}.")


def check_number(name: str, value, low=None, high=None) -> None:
    if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and value < low) \
            or (high is not None and value > high):
        raise ValueError(f"{name} is {value}; set it to a number in [{low}, {high}].")


def parse_list(text: str, name: str, spec: ValueList) -> list[float]:
    """The numbers of the list widget ``name``: each entry a finite number within the bounds, no empty entries
    ("1,,2" is refused, not read as "1, 2"), at most ``spec.max_count`` values; [] for empty optional text."""
    if not text.strip():
        if spec.optional:
            return []
        raise ValueError(f"{name} is empty; give numbers like {spec.example}.")
    entries = text.replace(";", ",").split(",")
    if len(entries) > spec.max_count:
        raise ValueError(f"{name} holds {len(entries)} values; at most {spec.max_count} are run (each one is a "
                         f"whole run): split the sweep over several nodes or queue it in parts.")
    values = []
    for position, entry in enumerate(entries, 1):
        if not entry.strip():
            raise ValueError(f"{name} {text!r} has an empty entry (value {position}): remove the extra comma, "
                             f"e.g. {spec.example}.")
        try:
            value = float(entry)
        except ValueError:
            raise ValueError(f"{name} {text!r} is not a comma-separated list of numbers, e.g. {spec.example}.") from None
        check_number(f"a value in {name}", value, spec.low, spec.high)
        if spec.whole and value != int(value):
            raise ValueError(f"{name} holds {value:g}; its values are whole numbers, e.g. {spec.example}.")
        values.append(int(value) if spec.whole else value)
    return values


def check_work(name: str, amount: int, limit: int, advice: str) -> None:
    """Refuse a run whose work (``amount`` of something, described by ``name``) is above ``limit``."""
    if amount > limit:
        raise ValueError(f"{name} is {amount}, above the limit of {limit}: {advice}.")
