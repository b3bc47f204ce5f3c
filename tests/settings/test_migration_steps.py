"""Each shipped migration on its own: what it changes, what it leaves alone, partial states and bad input."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from imaging.core import git as gitrepo
from imaging.settings.migrations import MigrationError

m1 = importlib.import_module("imaging.settings.migrations.m0001_rename_galil_address")
m2 = importlib.import_module("imaging.settings.migrations.m0002_split_labview_ini")
m3 = importlib.import_module("imaging.settings.migrations.m0003_database_section_to_json")
m4 = importlib.import_module("imaging.settings.migrations.m0004_database_schema_v2")


def tree_of(tmp_path: Path, files: dict[str, str]) -> Path:
    tree = tmp_path / "tree"
    gitrepo.write_dir(tree, {k: v.encode() for k, v in files.items()})
    return tree


def text(tree: Path) -> dict[str, str]:
    return {k: v.decode() for k, v in gitrepo.read_dir(tree).items()}


# --- m0001: rename a key across XML files ----------------------------------------------------------

MOTORS = """<?xml version="1.0"?>
<iocs>
  <ioc name="GALIL_01">
    <macros>
      <macro name="GALILADDR" value="mc01"/>
      <macro name="GALILADDRESS_OLD" value="untouched"/>
    </macros>
  </ioc>
  <ioc name="GALIL_02"><macros><macro name='GALILADDR' value="quoted-single"/></macros></ioc>
  <ioc name="GALIL_03"><macros><macro value="first" name="GALILADDR"/></macros></ioc>
  <!-- GALILADDR in a comment stays -->
  <note name="GALILADDR">not a macro</note>
</iocs>
"""


def test_m0001_renames_the_macro_in_every_xml_file_and_nothing_else(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"configurations/ioc/motors.xml": MOTORS,
                              "configurations/ioc/other.xml": '<iocs><macro name="GALILADDR" value="x"/></iocs>\n',
                              "notes.txt": 'name="GALILADDR"\n'})
    m1.migrate(tree)
    m1.check(tree)
    out = text(tree)
    assert out["configurations/ioc/motors.xml"] == (
        MOTORS.replace('<macro name="GALILADDR"', '<macro name="MOTOR_HOST"')
        .replace("<macro name='GALILADDR'", "<macro name='MOTOR_HOST'")
        .replace('<macro value="first" name="GALILADDR"', '<macro value="first" name="MOTOR_HOST"'))
    assert 'name="GALILADDRESS_OLD"' in out["configurations/ioc/motors.xml"]
    assert '<note name="GALILADDR">' in out["configurations/ioc/motors.xml"]
    assert out["configurations/ioc/other.xml"] == '<iocs><macro name="MOTOR_HOST" value="x"/></iocs>\n'
    assert out["notes.txt"] == 'name="GALILADDR"\n'


def test_m0001_check_refuses_an_ioc_that_ends_up_with_the_key_twice(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"a.xml": '<iocs><ioc name="G1"><macro name="GALILADDR" value="a"/>'
                                       '<macro name="MOTOR_HOST" value="b"/></ioc></iocs>\n'})
    m1.migrate(tree)
    with pytest.raises(MigrationError, match="IOC G1 now has MOTOR_HOST twice"):
        m1.check(tree)


# --- m0002: split one file into two ----------------------------------------------------------------

INSTRUMENT_INI = """; LabVIEW configuration of TEST
[DAE]
Instrument = "TEST"

[Detector Banks]
Count = 1
Bank 1 = "bank1"

[Sample Environment]
Device = "cryostat"

[Sample Environment Limits]
Max K = 300
"""


def test_m0002_splits_the_sample_environment_sections_into_their_own_file(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"labview/instrument.ini": INSTRUMENT_INI})
    m2.migrate(tree)
    m2.check(tree)
    out = text(tree)
    assert set(out) == {"labview/dae.ini", "labview/sample_environment.ini"}
    assert out["labview/dae.ini"] == ('; LabVIEW configuration of TEST\n[DAE]\nInstrument = "TEST"\n\n'
                                      '[Detector Banks]\nCount = 1\nBank 1 = "bank1"\n')
    assert out["labview/sample_environment.ini"] == ('[Sample Environment]\nDevice = "cryostat"\n\n'
                                                     "[Sample Environment Limits]\nMax K = 300\n")


def test_m0002_rerun_after_a_crash_between_the_two_writes_completes(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"labview/instrument.ini": INSTRUMENT_INI,
                              "labview/dae.ini": "[DAE]\nhalf written\n"})
    with pytest.raises(MigrationError, match="dae.ini already exists"):
        m2.migrate(tree)  # a different file of the same name is never overwritten silently
    tree2 = tree_of(tmp_path / "b", {"labview/instrument.ini": INSTRUMENT_INI})
    m2.migrate(tree2)
    expected = text(tree2)
    # the state a crash after the first write leaves: dae.ini written, the original still there
    tree3 = tree_of(tmp_path / "c", {"labview/instrument.ini": INSTRUMENT_INI,
                                     "labview/dae.ini": expected["labview/dae.ini"]})
    m2.migrate(tree3)
    assert text(tree3) == expected


def test_m0002_leaves_a_tree_without_the_file_alone(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"labview/dae.ini": "[DAE]\n"})
    m2.migrate(tree)
    assert text(tree) == {"labview/dae.ini": "[DAE]\n"}


# --- m0003: convert an ini section to a new format -------------------------------------------------

CONFIG_INI = """; description
[Instrument]
name = TEST

[Database]
host = db.example.org
port = 3307
database = exp_data
user = test_ctrl
timeout_s = 30
"""


def test_m0003_converts_the_database_section_to_typed_json(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"config/instrument.ini": CONFIG_INI})
    m3.migrate(tree)
    m3.check(tree)
    out = text(tree)
    assert out["config/instrument.ini"] == "; description\n[Instrument]\nname = TEST\n"
    assert json.loads(out["database/connection.json"]) == {
        "host": "db.example.org", "port": 3307, "database": "exp_data", "user": "test_ctrl", "timeout_s": "30"}
    m3.migrate(tree)
    assert text(tree) == out


def test_m0003_rerun_after_the_json_was_written_but_the_section_not_yet_removed(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"config/instrument.ini": CONFIG_INI})
    m3.migrate(tree)
    done = text(tree)
    half = tree_of(tmp_path / "h", {"config/instrument.ini": CONFIG_INI,
                                    "database/connection.json": done["database/connection.json"]})
    m3.migrate(half)
    assert text(half) == done


@pytest.mark.parametrize(("edit", "message"), [
    ("port = 3307", "port must be a number"),
    ("user = test_ctrl", "lacks user"),
])
def test_m0003_refuses_incomplete_or_untyped_values_and_changes_nothing(tmp_path: Path, edit: str,
                                                                       message: str) -> None:
    bad = CONFIG_INI.replace(edit, "port = 33o7" if "port" in edit else "")
    tree = tree_of(tmp_path, {"config/instrument.ini": bad})
    with pytest.raises(MigrationError, match=message):
        m3.migrate(tree)
    assert text(tree) == {"config/instrument.ini": bad}


def test_m0003_refuses_a_json_file_that_disagrees_with_the_section(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"config/instrument.ini": CONFIG_INI,
                              "database/connection.json": '{"host": "elsewhere", "port": 1}\n'})
    with pytest.raises(MigrationError, match="already exists with other values"):
        m3.migrate(tree)


# --- m0004: a post-boot step -----------------------------------------------------------------------


def test_m0004_records_the_schema_and_builds_the_guest_command(tmp_path: Path) -> None:
    conn = {"database": "exp_data", "host": "db", "port": 3306, "user": "t_ctrl"}
    tree = tree_of(tmp_path, {"database/connection.json": json.dumps(conn)})
    m4.migrate(tree)
    m4.check(tree)
    written = json.loads(text(tree)["database/connection.json"])
    assert written == {**conn, "schema_version": 2}
    cmd = m4.guest_command(gitrepo.read_dir(tree))
    assert cmd[:2] == [m4.MYSQL, rf"--defaults-extra-file={m4.OPTIONS_FILE}"]
    assert "--port=3306" in cmd and "--database=exp_data" in cmd
    assert not any("password" in a.lower() for a in cmd)
    with pytest.raises(MigrationError, match="connection.json is missing"):
        m4.guest_command({})
