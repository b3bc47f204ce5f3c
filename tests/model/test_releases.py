"""Release ids (table driven) and release definition loading."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from imaging.core.errors import InputError
from imaging.model.releases import ReleaseDefinition, ReleaseId, load_release, load_releases, newest_first

DATA = Path(__file__).parents[1] / "data"
REPO = Path(__file__).resolve().parents[2]

VALID = yaml.safe_load((DATA / "release_ids_valid.yaml").read_text(encoding="utf-8"))


def _invalid_rows() -> list[str]:
    rows = []
    for line in (DATA / "release_ids_invalid.txt").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        rows.append(line.replace("\\s", " ").replace("\\t", "\t").replace("\\n", "\n"))
    return rows


INVALID = _invalid_rows()

ORDERED = [
    "2000C1.0", "2025C5.0", "2025C5.1", "2025C5.10", "2025C10.0", "2026C1.0", "2026C1.2", "2026C1.9",
    "2026C1.11", "2026C2.0", "2026C9.3", "2026C9.9", "2026C10.0", "2026C11.0", "2026C99.999", "2027C1.0",
    "2100C1.0", "2999C99.999",
]


def test_tables_are_big_enough() -> None:
    assert len(VALID) >= 15
    assert len(INVALID) >= 20


@pytest.mark.parametrize("text", sorted(VALID))
def test_valid_ids_parse_to_their_parts_and_format_back(text: str) -> None:
    rid = ReleaseId.parse(text)
    assert [rid.year, rid.cycle, rid.patch] == VALID[text]
    assert str(rid) == text


@pytest.mark.parametrize("text", INVALID)
def test_invalid_ids_are_refused_naming_value_and_form(text: str) -> None:
    with pytest.raises(InputError) as info:
        ReleaseId.parse(text)
    msg = str(info.value)
    assert repr(text) in msg
    assert "<year>C<cycle>.<patch>" in msg


@pytest.mark.parametrize("value", [None, 2026, 2026.3, ["2026C3.0"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InputError):
        ReleaseId.parse(value)


@pytest.mark.parametrize(("a", "b"), list(zip(ORDERED, ORDERED[1:], strict=False)))
def test_explicit_order_pairwise(a: str, b: str) -> None:
    ra, rb = ReleaseId.parse(a), ReleaseId.parse(b)
    assert ra < rb and rb > ra and ra != rb and ra <= rb and not rb <= ra


@pytest.mark.parametrize("seed", range(20))
def test_shuffle_then_sort_restores_order(seed: int) -> None:
    ids = [ReleaseId.parse(t) for t in ORDERED]
    shuffled = ids[:]
    random.Random(seed).shuffle(shuffled)
    assert sorted(shuffled) == ids


@given(st.integers(2000, 2999), st.integers(1, 99), st.integers(0, 999))
def test_round_trip_every_id_in_range(year: int, cycle: int, patch: int) -> None:
    rid = ReleaseId(year, cycle, patch)
    assert ReleaseId.parse(str(rid)) == rid


@given(st.tuples(st.integers(2000, 2999), st.integers(1, 99), st.integers(0, 999)),
       st.tuples(st.integers(2000, 2999), st.integers(1, 99), st.integers(0, 999)))
def test_order_is_numeric_tuple_order(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    assert (ReleaseId(*a) < ReleaseId(*b)) == (a < b)


@pytest.mark.parametrize(("year", "cycle", "patch"), [(1999, 1, 0), (2026, 0, 0), (2026, 1, 1000),
                                                      (2026, True, 0)])
def test_direct_construction_is_range_checked(year: int, cycle: int, patch: int) -> None:
    with pytest.raises(InputError):
        ReleaseId(year, cycle, patch)


# --- definitions ---------------------------------------------------------------------------------------

GOOD = {
    "id": "2026C3.1",
    "os_template": {"name": "win11-ltsc-2026.1", "sha256": "a" * 64},
    "apps": {"name": "apps-2026C3.1", "version": "2026C3.1"},
    "settings_version": 3,
    "includes_hotfixes": ["hf-0001"],
    "notes": "patch release",
}


def _write(tmp_path: Path, data: object, name: str = "2026C3.1.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_shipped_samples_load_newest_first() -> None:
    rels = load_releases(REPO / "releases")
    assert [r.id for r in newest_first(rels)] == ["2026C3.1", "2026C3.0", "2026C1.0", "2025C5.0"]
    assert [rels[i].settings_version for i in ("2025C5.0", "2026C1.0", "2026C3.0", "2026C3.1")] == [3, 4, 5, 5]
    for rid, rel in rels.items():
        assert rel.apps.version == rid and rel.apps.name == f"apps-{rid}"
        assert rel.notes.strip()
    assert rels["2026C3.0"].os_template.name == "win11-ltsc-2026.1"
    assert rels["2025C5.0"].os_template.name == rels["2026C1.0"].os_template.name == "win11-ltsc-2025.1"


def test_good_definition_loads(tmp_path: Path) -> None:
    rel = load_release(_write(tmp_path, GOOD))
    assert isinstance(rel, ReleaseDefinition)
    assert rel.release_id == ReleaseId(2026, 3, 1) and not rel.is_revoked


def test_revoked_definition_loads(tmp_path: Path) -> None:
    data = dict(GOOD, revoked={"reason": "bad driver", "when": "2026-05-01T10:00:00Z", "who": "ops"})
    assert load_release(_write(tmp_path, data)).is_revoked


@pytest.mark.parametrize(("change", "field", "fragment"), [
    ({"colour": "blue"}, "colour", "unknown key"),
    ({"apps": {**GOOD["apps"], "sha": "x"}}, "apps.sha", "unknown key"),
    ({"settings_version": "three"}, "settings_version", "integer"),
    ({"settings_version": 0}, "settings_version", "greater than or equal to 1"),
    ({"includes_hotfixes": "hf-0001"}, "includes_hotfixes", "list"),
    ({"os_template": {"name": "win11 ltsc"}}, "os_template.name", "not a safe name"),
    ({"os_template": {"name": "x", "sha256": "ABC"}}, "os_template.sha256", "not a sha256"),
    ({"id": "2026c3.1"}, "id", "not a release id"),
    ({"includes_hotfixes": ["hf 1"]}, "includes_hotfixes", "not a safe name"),
    ({"revoked": {"reason": "r", "who": "me"}}, "revoked.when", "missing"),
])
def test_definition_errors_name_file_field_and_value(tmp_path: Path, change: dict, field: str,
                                                     fragment: str) -> None:
    path = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(InputError) as info:
        load_release(path)
    err = info.value
    assert err.file == str(path) and err.field == field
    msg = str(err)
    assert str(path) in msg and f"field '{field}'" in msg and fragment in msg and "Fix:" in msg


def test_missing_key_is_named(tmp_path: Path) -> None:
    data = {k: v for k, v in GOOD.items() if k != "notes"}
    with pytest.raises(InputError) as info:
        load_release(_write(tmp_path, data))
    assert info.value.field == "notes"


def test_file_name_must_equal_id(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD, name="2026C3.2.yaml")
    with pytest.raises(InputError) as info:
        load_release(path)
    assert info.value.field == "id" and str(path) in str(info.value) and "2026C3.1.yaml" in str(info.value)


def test_load_releases_refuses_one_bad_file_naming_it(tmp_path: Path) -> None:
    shutil.copy(REPO / "releases" / "2026C3.0.yaml", tmp_path)
    bad = _write(tmp_path, {**GOOD, "extra": 1})
    with pytest.raises(InputError) as info:
        load_releases(tmp_path)
    assert info.value.file == str(bad)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "2026C3.1.yaml"
    p.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(InputError, match="mapping"):
        load_release(p)
    p.write_text("id: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match="YAML"):
        load_release(p)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_releases(tmp_path / "nope")
