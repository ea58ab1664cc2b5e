"""PRISM's typed memory: the validator table (§5.6 check 3), stable rendering (check 4), schemas."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from longweave.agents.prism_prompts import QAMemory, SummaryMemory, revision_schema
from longweave.errors import ConfigError
from longweave.memory.structured_memory import (
    FieldSpec,
    SchemaSpec,
    StructuredMemory,
    from_json_schema,
    from_model,
    from_spec,
    load_schema_file,
)


class Person(BaseModel):
    name: str
    age: int


class Rich(BaseModel):
    count: int
    score: float
    done: bool
    title: str | None = None
    people: list[Person] = Field(default_factory=list)
    tags: dict[str, list[str]] = Field(default_factory=dict)


def qa_memory(ops: tuple[str, ...] = ("add",)) -> StructuredMemory:
    memory = StructuredMemory(from_model(QAMemory), ops=ops)
    assert memory.apply("add", ["evidence", 0], "the wall was built in 1742", 0) is None
    assert memory.apply("add", ["entities", "Mara Quill"], "first keeper", 1) is None
    return memory


# (op, path, value, ops allowed, expected phrase in the reason)
REJECTS: list[tuple[str, list[Any], Any, tuple[str, ...], str]] = [
    ("add", ["evidence", 0], "again", ("add",), "already exists"),
    ("add", ["entities", "Mara Quill"], "again", ("add",), "already exists"),
    ("update", ["candidate_answers", 0], "x", ("add", "update"), "does not exist"),
    ("update", ["evidence", 0], "changed", ("add",), "not allowed"),
    ("add", ["candidate_answers"], "not a list", ("add",), "expected a list"),
    ("add", ["evidence", 1], ["a list"], ("add",), "expected a string"),
    ("add", ["evidence", 1], "x" * 301, ("add",), "longer than 300"),
    ("add", ["nowhere"], "x", ("add",), "not in the schema"),
    ("add", ["evidence", 5], "gap", ("add",), "must be 1"),
    ("add", ["evidence", "first"], "x", ("add",), "list index"),
    ("add", ["evidence", 1, "deeper"], "x", ("add",), "goes below"),
    ("add", ["entities", "k" * 65], "x", ("add",), "map key"),
    ("add", [], "x", ("add",), "empty"),
]


@pytest.mark.parametrize(("op", "path", "value", "ops", "reason"), REJECTS)
def test_validator_rejects_with_a_reason_and_leaves_memory_unchanged(
    op: str, path: list[Any], value: Any, ops: tuple[str, ...], reason: str
) -> None:
    memory = qa_memory(ops)
    before = memory.render("in_place"), memory.render("amendments")
    problem = memory.apply(op, path, value, 2)
    assert problem is not None and reason in problem
    assert (memory.render("in_place"), memory.render("amendments")) == before
    assert 2 not in memory.contributing()


def test_valid_revisions_apply_create_containers_and_record_provenance() -> None:
    memory = qa_memory(("add", "update"))
    assert memory.apply("add", ["evidence", 1], "lamp lit in 1889", 3) is None
    assert memory.apply("add", ["candidate_answers"], ["Mara Quill"], 3) is None
    assert memory.apply("update", ["evidence", 0], "wall of 1742, 210 yards", 4) is None
    assert memory.data == {
        "evidence": ["wall of 1742, 210 yards", "lamp lit in 1889"],
        "entities": {"Mara Quill": "first keeper"},
        "candidate_answers": ["Mara Quill"],
    }
    assert [e["op"] for e in memory.log] == ["add", "add", "add", "add", "update"]
    assert memory.sources(["evidence", 0]) == [0, 4]
    assert memory.sources(["evidence"]) == [0, 3, 4]  # everything under the field
    assert memory.sources(["candidate_answers", 0]) == [3]  # the list was added whole
    assert memory.contributing() == [0, 1, 3, 4]


def test_nested_objects_lists_and_maps_type_check_strictly() -> None:
    memory = StructuredMemory(from_model(Rich))
    assert memory.apply("add", ["count"], 3, 0) is None
    assert memory.apply("add", ["score"], 2, 0) is None  # an int is a number
    assert "goes below" in memory.apply("add", ["count", 1], 1, 0)
    assert "expected true/false" in memory.apply("add", ["done"], 1, 0)
    assert memory.apply("add", ["done"], True, 0) is None
    assert "expected a string" in memory.apply("add", ["title"], True, 0)
    assert "expected an integer" in memory.apply("add", ["people", 0, "age"], "41", 0)
    assert memory.apply("add", ["people", 0, "name"], "Mara", 0) is None  # list and object made
    assert memory.apply("add", ["people", 0, "age"], 41, 0) is None
    assert "unknown field" in memory.apply("add", ["people", 1], {"nick": "T"}, 0)
    assert memory.apply("add", ["people", 1], {"name": "Tobias"}, 0) is None
    assert memory.apply("add", ["tags", "dates"], ["1887", "1889"], 1) is None
    assert "longer than 10" in memory.apply("add", ["tags", "many"], ["x"] * 11, 1)
    memory2 = StructuredMemory(from_model(Rich))
    assert "finite" in memory2.apply("add", ["score"], float("nan"), 1)
    assert "expected an integer" in memory2.apply("add", ["count"], 2.5, 1)
    assert memory.data["people"] == [{"name": "Mara", "age": 41}, {"name": "Tobias"}]


def test_cap_check_rejects_growth_past_it() -> None:
    memory = qa_memory()
    before = memory.render()
    problem = memory.apply("add", ["evidence", 1], "more", 2, fits=lambda m: False)
    assert problem is not None and "mem_cap" in problem
    assert memory.render() == before


def test_rendering_is_insertion_ordered_and_grows_at_the_end() -> None:
    memory = StructuredMemory(from_model(QAMemory))
    memory.apply("add", ["entities", "Zed"], "z", 0)
    first = memory.render("amendments")
    memory.apply("add", ["entities", "Abe"], "a", 1)
    assert memory.render("in_place") == '{"entities":{"Zed":"z","Abe":"a"}}'
    assert memory.render("amendments").startswith(first)
    assert memory.render("amendments").count("\n") == 2


_HASH_SCRIPT = """
from longweave.agents.prism_prompts import QAMemory
from longweave.memory.structured_memory import StructuredMemory, from_model
import hashlib
m = StructuredMemory(from_model(QAMemory))
for k in ["zeta", "alpha", "mu", "Ünïcode"]:
    m.apply("add", ["entities", k], k * 2, 0)
m.apply("add", ["evidence", 0], "café 3.5 ½", 1)
print(hashlib.sha256((m.render("in_place") + m.render("amendments")).encode()).hexdigest())
"""


def test_same_memory_same_sha256_across_processes_and_hash_seeds() -> None:
    digests = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT], capture_output=True,
                             text=True, env=env, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    m = StructuredMemory(from_model(QAMemory))
    for k in ["zeta", "alpha", "mu", "Ünïcode"]:
        m.apply("add", ["entities", k], k * 2, 0)
    m.apply("add", ["evidence", 0], "café 3.5 ½", 1)
    here = hashlib.sha256((m.render("in_place") + m.render("amendments")).encode()).hexdigest()
    assert digests == {here}


def test_schemas_from_json_schema_files_and_specs(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(Rich.model_json_schema()))
    assert load_schema_file(path) == from_model(Rich)
    assert from_model(Rich).fields["people"].label() == "list[{name: str, age: int}]"
    spec = SchemaSpec(name="meetings", fields=[
        FieldSpec(name="decisions", description="what was decided", type="list[str]"),
        FieldSpec(name="owners", description="task -> people", type="dict[str,list[str]]"),
    ])
    schema = from_spec(spec)
    assert schema.fields["owners"].label() == "dict[str,list[str]]"
    assert schema.depth() == 3
    with pytest.raises(ConfigError):
        from_spec(SchemaSpec(name="dup", fields=[spec.fields[0], spec.fields[0]]))
    with pytest.raises(ConfigError):
        from_json_schema({"type": "string"})
    with pytest.raises(ConfigError):
        load_schema_file(tmp_path / "missing.json")


def test_revision_schema_bounds_everything() -> None:
    from longweave.structured import schema_fits

    for model in (QAMemory, SummaryMemory, Rich):
        batch = revision_schema(from_model(model), ("add",), 300, 10, 16)
        assert schema_fits(batch, 1 << 30, lambda s: len(s))
        parsed = batch.model_validate({"revisions": [{"op": "add", "path": ["x", 0],
                                                      "value": "v"}]})
        assert parsed.revisions[0].path == ["x", 0]
        with pytest.raises(ValueError):
            batch.model_validate({"revisions": [{"op": "update", "path": ["x"], "value": "v"}]})
