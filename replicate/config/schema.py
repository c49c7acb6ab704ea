"""The schema of `conf/paper/<id>.yaml`: what a paper declares, checked when it is composed
(`check_paper`: the first unknown, missing or mistyped key, named with its path), and its
reference, generated into conf/README.md (`reference`; `python -m replicate schema` writes
it, and a test keeps it current).

A table's cells are free-form by kind (a count, a measured run, a ratio of two runs, a claim):
`Report` reads each kind's keys and names a missing one when the table is shown.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, choices

TABLE_KINDS = ("exact", "measured", "speed")


def _doc(text: str, default: Any = dataclasses.MISSING) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class TableSpec:
    """One of the paper's tables (a list item of `tables`), regenerated side by side with the
    paper's numbers by `Report.show(id, ...)`."""

    id: str = _doc("the table's name in notebooks and reports/ (`table2`, `fig6`)")
    title: str = _doc("what the paper calls it, with its number")
    kind: str = _doc("`exact` (counted from our networks), `measured` (from trained runs) or `speed` (timed)")
    source: str = _doc("where in the paper the reported numbers are (table, column, section; the version read)")
    cells: list = _doc("the rows: each with the paper's value (`paper`) and what gives ours (`model`, "
                       "`experiment`, `ratio`, ...)")
    tolerance: Any = _doc("`rounding` (half a unit of the printed digit) or a number; a cell may set its own", None)
    unit: str = _doc("the unit the paper prints (`M`, `%`, `x10^9`)", None)
    metric: str = _doc("what the column holds, in words (`parameters`, `top-1 error`)", None)
    quantity: str = _doc("the measured quantity a cell compares (`mparams`, `gmacs`, `test_top1_err`, ...)", None)
    input_size: list = _doc("[C, H, W] at which exact counts are taken", None)
    model_kwargs: dict = _doc("builder arguments shared by the table's models", None)
    network: str = _doc("the network the table describes (a layer table's builder)", None)
    measured_unit: str = _doc("a speed table's unit (`ms`, `fps`)", None)
    measured_on: list = _doc("the profiles that measure the table; the others show `not_run_because`", None)
    not_run_because: dict = _doc("per profile, why the table's cells are not run there", None)
    show_params: bool = _doc("also show each model's parameter count beside the table", None)
    approximation: str = _doc("the paper's own approximation of its numbers (\"~25 M\"), quoted", None)


@dataclass
class PaperSpec:
    """conf/paper/<id>.yaml: one paper, its experiments, what each profile runs, and its tables."""

    id: str = _doc("the paper's name: the file's stem, its notebook's and its params.yaml entry's")
    title: str = _doc("the paper's title")
    authors: str = _doc("its authors")
    year: int = _doc("the year of the version read")
    venue: str = _doc("where it appeared")
    arxiv: str = _doc("its arXiv id (quoted)")
    experiments: dict = _doc("name -> list of Hydra group choices and overrides "
                             "(`[data=cifar10, model=resnet_cifar, model.name=resnet20, recipe=resnet_cifar]`)")
    plan: dict = _doc("per profile (`reduced`, `full`), the experiments run_all trains, in order")
    floors: dict = _doc("per profile, each planned run's lowest acceptable test score (a fraction); "
                        "every planned run has one")
    tables: list = _doc("the paper's tables (below)")
    claims: list = _doc("the paper's claims checked as comparisons of two cells (`Report.claim_summary`)", None)
    scale: dict = _doc("per profile, overrides applied after each experiment's (one list, or one per kind "
                       "`classification`/`detection` or per model config)", None)
    presets: dict = _doc("name -> list of overrides several experiments share; an experiment's "
                         "`preset=<name>` stands for that list, in place", None)
    input_px: dict = _doc("per profile, named input sizes the experiments interpolate", None)
    compression: dict = _doc("Quant-Noise: the compression rows applied after training", None)


# The annotations are strings (postponed evaluation); `Any` is not checked.
_TYPES = {"str": str, "int": int, "bool": bool, "dict": dict, "list": list}


def _check_fields(spec: type, values: dict, where: str) -> None:
    known = {f.name: f for f in fields(spec)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}.{choices(key, known)} The schema is in conf/README.md.")
    for name, f in known.items():
        value = values.get(name)
        if value is None:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key {name!r} ({f.metadata['doc']}).")
            continue
        wanted = _TYPES.get(f.type)
        if wanted is not None and (not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))):
            raise ConfigError(f"{where}.{name}: {value!r} is not a {wanted.__name__} ({f.metadata['doc']}).")


def check_paper(paper: dict, name: str) -> None:
    """Raise `ConfigError` for the first key of conf/paper/<name>.yaml outside the schema."""
    where = f"conf/paper/{name}.yaml"
    _check_fields(PaperSpec, paper, where)
    if paper["id"] != name:
        raise ConfigError(f"{where}: id {paper['id']!r} differs from the file's name {name!r}.")
    seen = set()
    for index, table in enumerate(paper["tables"]):
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: tables[{index}] is not a mapping.")
        place = f"{where}: tables[{index}] ({table.get('id', '?')})"
        _check_fields(TableSpec, table, place)
        if table["kind"] not in TABLE_KINDS:
            raise ConfigError(f"{place}.kind: {table['kind']!r} is not one of {', '.join(TABLE_KINDS)}.")
        if table["id"] in seen:
            raise ConfigError(f"{place}: a second table with id {table['id']!r}.")
        seen.add(table["id"])
    for profile, planned in paper["plan"].items():
        unknown = [e for e in planned or [] if e not in paper["experiments"]]
        if unknown:
            raise ConfigError(f"{where}: plan.{profile} names {unknown}, which are not experiments."
                              f"{choices(unknown[0], paper['experiments'])}")


def reference() -> str:
    """conf/README.md: the schema as a reader needs it, generated from the dataclasses above."""
    lines = ["# conf/", "",
             "Hydra's configuration (`replicate.config.compose` is its only entry point): `config.yaml` and the "
             "groups `data/`, `model/`, `recipe/`, `trainer/`, `profile/`, `quant/`, `logger/`, and one "
             "`paper/<id>.yaml` per paper. This page is generated by `python -m replicate schema` from "
             "`replicate/config/schema.py`; composing a paper checks its file against it.", ""]
    for spec in (PaperSpec, TableSpec):
        lines += [f"## {'conf/paper/<id>.yaml' if spec is PaperSpec else 'A table (an item of `tables`)'}", "",
                  " ".join((spec.__doc__ or "").split()), "", "| key | required | type | what it holds |",
                  "|---|---|---|---|"]
        for f in fields(spec):
            kind = "any" if f.type == "Any" else f.type
            required = "yes" if f.default is dataclasses.MISSING else ""
            lines.append(f"| `{f.name}` | {required} | {kind} | {f.metadata['doc']} |")
        lines.append("")
    lines += ["Table kinds: " + ", ".join(f"`{k}`" for k in TABLE_KINDS) + ". " + " ".join(
        (__doc__ or "").split("\n\n")[1].split()), ""]
    return "\n".join(lines)


README = Path(__file__).resolve().parents[2] / "conf" / "README.md"


def write_reference() -> Path:
    """Write conf/README.md (`python -m replicate schema`)."""
    README.write_text(reference())
    return README
