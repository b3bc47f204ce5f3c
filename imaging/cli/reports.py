"""Tasks that look back and out: calibrate the time model from a run's report, the fleet as a page, and the
inventory for other tools (Ansible)."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from imaging.cli.ui import console, context, reports_errors
from imaging.core.errors import InputError
from imaging.ops import ansible_inventory as ansible
from imaging.ops import calibrate as calibrating
from imaging.ops import pages
from imaging.ops.deploy import TimeModel


@task(help={"from_": "the report of a real deploy, prepare or switch: its run id or its .json/.html path",
            "out": "where to write the time model (default: .state/time-model-<run id>.yaml)",
            "model": "the model to start from (default: the built-in defaults)"})
@reports_errors
def calibrate(c, from_, out=None, model=None):  # noqa: ANN001
    """Write a time model from what a real run measured (the mean of each phase over the instruments that
    succeeded), for `--model=` of deploy, prepare and switch and their --simulate."""
    with context() as ctx:
        cal = calibrating.calibrate(ctx, from_, TimeModel.load(Path(model) if model else None))
        dest = Path(out) if out else ctx.paths.state / f"time-model-{Path(cal.source).stem}.yaml"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(cal.yaml_text(), encoding="utf-8")
    console.print(f"measured over {cal.instruments} instrument(s) of {cal.kind} {Path(cal.source).stem}:")
    for phase, seconds in cal.measured.items():
        console.print(f"  {phase:7} {seconds:10.3f} s")
    console.print(f"time model written to {dest}; use it with --model={dest}")


@task(help={"format": "ansible: an Ansible YAML inventory (the only format so far)",
            "out": "write it to this file (default: print it)"})
@reports_errors
def inventory(c, format="ansible", out=None):  # noqa: A002, ANN001
    """The inventory for other tools: the hosts and instrument VMs with their groups (deploy group, Hyper-V
    host, technique), reached over PowerShell remoting; never a credential. Refused, writing nothing, when
    the inventory does not validate."""
    if format != "ansible":
        raise InputError("unknown inventory format", field="--format", value=format, fix="use --format=ansible")
    with context() as ctx:
        text = ansible.ansible_yaml(ctx.inventory)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        console.print(f"Ansible inventory written to {out}: {len(ctx.inventory.hosts)} hosts, "
                      f"{len(ctx.inventory.instruments)} instrument VMs; check it with "
                      f"`ansible-inventory -i {out} --graph`")
    else:
        print(text, end="")


@task(help={"fleet": "the fleet as it is now (the only report so far; a run's report is written by the run)",
            "out": "where to write the page (default: .state/reports/report-fleet-<time>.html)",
            "no_drift": "do not read each instrument's Settings volume for drift (faster)"})
@reports_errors
def report(c, fleet=False, out=None, no_drift=False):  # noqa: ANN001
    """Write the fleet as one self-contained HTML page: per instrument what it runs, what is prepared, its
    labels, hotfixes, side, last operation and settings drift, and a strip of its last operations."""
    if not fleet:
        raise InputError("say which report", field="--fleet",
                         fix="pass --fleet; a deploy, prepare, switch, hotfix or apply-settings writes its own")
    with context() as ctx:
        page, rows = pages.fleet_page(ctx, drift=not no_drift, out=Path(out) if out else None)
    drifted = [r.status.instrument for r in rows if r.drift not in ("none", "-", "not checked")]
    console.print(f"{len(rows)} instruments; drift on {', '.join(drifted) or 'none'}")
    console.print(f"written to {page}")
