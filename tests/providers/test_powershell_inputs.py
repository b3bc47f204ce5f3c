"""render_script refuses bad step inputs with an InputError naming the field, before any script exists."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest

from imaging.core.errors import InputError
from imaging.core.hashing import sha256_bytes
from imaging.providers.hyperv.scripts import render_script, settings_manifest

SAMPLES = json.loads((Path(__file__).parents[1] / "golden" / "powershell" / "_inputs.json").read_text())


@pytest.mark.parametrize("action, field, value", [
    ("get_state", "vm", "NDX ZOOM; Stop-Computer"),
    ("stage_artifact", "sha256", "ABC"),
    ("stage_artifact", "dest_path", "D:\\Imaging\\..\\Windows\\x.vhdx"),
    ("stage_artifact", "share_path", "relative\\path.vhdx"),
    ("create_disk", "label", "Bad Label!"),
    ("create_disk", "role", "scratch"),
    ("create_disk", "size_gb", 0),
    ("attach_disk", "slot", 64),
    ("attach_disk", "slot", "0"),
    ("stop_vm", "timeout_s", True),
    ("rescue_user_files", "dest_rel", "../outside"),
    ("write_settings", "manifest_name", "/abs/manifest.json"),
    ("ensure_vm", "switch", "Instruments\n; Stop-Computer"),
    ("ensure_vm", "switch", "Instru\x00ments"),
    ("ensure_vm", "switch", "Instruments."),
])
def test_bad_value_is_refused_naming_the_field(action, field, value):
    inputs = copy.deepcopy(SAMPLES[action])
    inputs[field] = value
    with pytest.raises(InputError) as info:
        render_script(action, inputs)
    assert info.value.field == field and info.value.file == f"step {action}"


@pytest.mark.parametrize("action, mutate, field", [
    ("preflight", lambda i: i["artifacts"][0].update(sha256="x"), "artifacts[0].sha256"),
    ("configure_guest", lambda i: i["volumes"][1].update(link="C:\\a\\..\\Windows"), "volumes[1].link"),
    ("health_check", lambda i: i["links"][0].update(label="a b"), "links[0].label"),
    ("write_settings", lambda i: i["files"].update({"..\\x.txt": "x"}), "files['..\\\\x.txt']"),
    ("write_settings", lambda i: i["files"].update({"ok.txt": 3}), "files['ok.txt']"),
    ("write_settings", lambda i: i["files"].update({"ok.txt": "not base64!"}), "files['ok.txt']"),
    ("get_state", lambda i: i.pop("vm"), "vm"),
    ("write_volume_files", lambda i: i["files"].update({"drift/NUL.txt": "x"}), "files['drift/NUL.txt']"),
    ("write_volume_files", lambda i: i["files"].update({"../x.txt": "x"}), "files['../x.txt']"),
])
def test_bad_nested_value_is_refused_naming_where(action, mutate, field):
    inputs = copy.deepcopy(SAMPLES[action])
    mutate(inputs)
    with pytest.raises(InputError) as info:
        render_script(action, inputs)
    assert info.value.field == field


def test_unknown_action_is_refused():
    with pytest.raises(InputError, match="unknown step action"):
        render_script("format_c", {})


def test_settings_manifest_digest_is_over_sorted_path_and_hash_pairs():
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    text, digest = settings_manifest({"b.txt": b64(b"2"), "a/c.txt": b64(b"1")})
    manifest = json.loads(text)
    assert manifest["digest"] == digest and set(manifest["files"]) == {"b.txt", "a/c.txt"}
    assert manifest["files"]["b.txt"] == sha256_bytes(b"2")  # of the bytes, not of their base64
    # Independent of the order the files come in, and sensitive to any content change.
    assert settings_manifest({"a/c.txt": b64(b"1"), "b.txt": b64(b"2")})[1] == digest
    assert settings_manifest({"a/c.txt": b64(b"1"), "b.txt": b64(b"2 ")})[1] != digest
