"""The sample settings repository, for rehearsing on the shipped fleet what a facility's real one holds: a
common line (``main``) and instrument branches at older formats (made by rendering the frozen version-1
templates and migrating them to 3 or 4), a few at the current one, and the rest with no branch yet.
Deterministic: the same inventory gives the same commits (fixed identity and dates)."""

from __future__ import annotations

from pathlib import Path

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.model.inventory import Inventory
from imaging.settings import migrations
from imaging.settings.instruments import instrument_variables
from imaging.settings.render import VERSION_FILE, render_templates

# Instrument -> the format its branch is at; every other instrument has no branch yet (its first deploy, or
# `invoke settings-init`, makes one from the common line).
SAMPLE_BRANCHES = {"LET": 3, "WISH": 3, "MARI": 4, "ZOOM": 5, "GEM": 5}
# What an instrument's own branch holds: the parts tuned on the instrument (the rest comes from templates).
OWN_PREFIXES = ("configurations/ioc/", "labview/", "config/")
IDENTITY = {"GIT_AUTHOR_NAME": "Sample Facility", "GIT_AUTHOR_EMAIL": "controls@facility.example.org",
            "GIT_COMMITTER_NAME": "Sample Facility", "GIT_COMMITTER_EMAIL": "controls@facility.example.org",
            "GIT_AUTHOR_DATE": "2026-01-05T09:00:00Z", "GIT_COMMITTER_DATE": "2026-01-05T09:00:00Z"}


def make_sample_repo(dest: Path, inventory: Inventory, v1_templates: Path, *, release: str = "2026C3.0") -> Path:
    """Write the sample repository at ``dest`` (which must not exist yet)."""
    dest = Path(dest)
    if dest.exists():
        raise InputError(f"{dest} exists; the sample settings repository is made only where there is none",
                         file=str(dest), fix="remove it, or choose another --dest")
    dest.mkdir(parents=True)
    gitrepo.run_git(dest, "init", "-q", "--bare", "-b", "main")  # as on a server: no checkout to disturb
    latest = migrations.latest_version()
    readme = (b"The sample settings repository of the shipped fleet (made by `invoke settings-sample`).\n"
              b"main is the common line; each instrument's branch holds what was tuned on it.\n")
    gitrepo.commit_files(dest, "main", {"README.md": readme, VERSION_FILE: f"{latest}\n".encode()},
                         "The common line", replace=True, identity=IDENTITY)
    sources = gitrepo.read_dir(Path(v1_templates))
    for name, version in sorted(SAMPLE_BRANCHES.items()):
        inst = inventory.instrument(name)
        v1 = render_templates(sources, instrument=inst.name, variables={
            **instrument_variables(inst, release), "instrument": inst.name, "vm": inst.vm})
        files, _ = migrations.migrate_files({**v1, VERSION_FILE: b"1\n"}, version)
        own = {rel: data for rel, data in files.items() if rel.startswith(OWN_PREFIXES)}
        own[VERSION_FILE] = f"{version}\n".encode()
        gitrepo.commit_files(dest, inst.vm, own, f"{inst.name}: settings as tuned on the instrument (format {version})",
                             replace=True, create_from="refs/heads/main", identity=IDENTITY)
    return dest
