"""The spine: recipe/flag config building, and atomic self-describing stage folders."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest

from youri.config import ConfigError, build_config, config_to_dict, load_recipe
from youri.io import DataError, SkipCounter, iter_jsonl, require_field
from youri.stage import StageExistsError, StageWriter, fingerprint, is_complete, read_manifest


@dataclasses.dataclass
class Source:
    path: str
    lang: Literal["ja", "en"] = "ja"
    weight: float = 1.0


@dataclasses.dataclass
class Inner:
    depth: int = 2


@dataclasses.dataclass
class Toy:
    out: str = "runs/toy"
    lr: float = 3e-4
    steps: int = 10
    compile: bool = False
    note: str | None = None
    sources: list[Source] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_recipe_then_flags_override_and_coerce(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("toy:\n  lr: 1.0e-3\n  steps: 5\n  sources:\n    - {path: a.jsonl, lang: en, weight: 2}\n")
    section = load_recipe(recipe)["toy"]
    cfg = build_config(Toy, section, {"steps": "7", "compile": "true", "inner.depth": "4", "note": "null"})
    assert cfg.lr == pytest.approx(1e-3) and cfg.steps == 7 and cfg.compile is True
    assert cfg.inner.depth == 4 and cfg.note is None
    assert cfg.sources == [Source(path="a.jsonl", lang="en", weight=2.0)]
    assert config_to_dict(cfg)["sources"][0]["weight"] == 2.0


def test_flag_value_for_list_field_is_yaml():
    cfg = build_config(Toy, None, {"sources": "[{path: b.txt, lang: ja}]"})
    assert cfg.sources[0].path == "b.txt"


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"stpes": 3}, "unknown key 'stpes'; did you mean 'steps'"),
        ({"inner": {"dept": 3}}, "toy.inner: unknown key 'dept'; did you mean 'depth'"),
        ({"sources": [{"path": "a", "lnag": "ja"}]}, "toy.sources[0]: unknown key 'lnag'"),
        ({"sources": [{"path": "a", "lang": "fr"}]}, "'fr' is not one of"),
        ({"steps": "ten"}, "toy.steps: expected int"),
        ({"steps": 2.5}, "expected an integer"),
        ({"sources": [{"lang": "ja"}]}, "missing 1 required positional argument: 'path'"),
    ],
)
def test_bad_keys_and_values_are_named(bad, needle):
    with pytest.raises(ConfigError) as err:
        build_config(Toy, bad, where="toy")
    assert needle in str(err.value)


def test_stage_folder_is_atomic_and_self_describing(tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("hello")
    out = tmp_path / "stage"
    with StageWriter(out, stage="toy", config=Toy(), inputs=[data]) as stage:
        (stage.path / "payload.bin").write_bytes(b"x")
        assert not out.exists() and not is_complete(stage.path)  # nothing looks complete yet
        stage.finish({"loss": 1.5})
    assert is_complete(out) and not stage.path.exists()
    manifest = read_manifest(out)
    assert manifest["stage"] == "toy" and manifest["config"]["lr"] == 3e-4
    assert manifest["inputs"] == {str(data): fingerprint(data)}
    assert json.loads((out / "metrics.json").read_text()) == {"loss": 1.5}
    assert fingerprint(out) == manifest["fingerprint"]
    with pytest.raises(StageExistsError):
        StageWriter(out, stage="toy", config=Toy())


def test_killed_stage_leaves_partial_that_resumes_only_with_same_config(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with StageWriter(out, stage="toy", config=Toy()) as stage:
            (stage.path / "shard0").write_text("done")
            raise RuntimeError("killed")
    assert not out.exists() and (stage.path / "shard0").exists()
    with StageWriter(out, stage="toy", config=Toy()) as again:
        assert (again.path / "shard0").exists()  # same fingerprint: progress kept
    with StageWriter(out, stage="toy", config=Toy(steps=99)) as other:
        assert not (other.path / "shard0").exists()  # other config: progress discarded


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n{"txt": "c"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: malformed JSONL line"):
        list(iter_jsonl(path))
    skipped = SkipCounter()
    rows = list(iter_jsonl(path, skip_bad=skipped))
    assert [n for n, _ in rows] == [1, 3] and skipped.count == 1
    with pytest.raises(DataError, match=r"d.jsonl:3: missing field 'text' \(fields present: txt\)"):
        for lineno, record in rows:
            require_field(record, "text", path, lineno)
