"""Two-phase deploys: prepare the next generation while instruments run, switch to it in the shutdown."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from imaging.cli.ui import (
    FleetDisplay,
    StepPrinter,
    confirm,
    console,
    context,
    names,
    print_abort_rule,
    print_outcome,
    print_plan,
    print_prediction,
    print_recap,
    reports_errors,
    run_live,
)
from imaging.core.errors import ImagingError
from imaging.ops import facts, pages, sides
from imaging.ops import prepare as preparing
from imaging.ops import switch as switching
from imaging.ops.deploy import DEFAULT_MAX_FAIL_PERCENT, Options, TimeModel
from imaging.ops.switch import SWITCH_PARALLEL


@task(help={"release": "the release (id or label) to prepare",
            "group": "prepare this group's instruments",
            "instruments": "comma-separated names, or @failed for the failures of the last prepare",
            "all": "prepare every instrument",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "force": "prepare the release an instrument already runs",
            "drop_hotfix": "comma-separated hotfix ids the switch may drop (the release neither includes them nor "
                           "is declared for them)",
            "yes": "do not ask for confirmation (unattended runs)",
            "simulate": "predict the preparation on a virtual clock with the time model; change nothing",
            "model": "a YAML file overriding the time model's defaults (see docs/deploy.md)"})
@reports_errors
def prepare(c, release, group=None, instruments="", all=False, parallel=4, force=False,  # noqa: A002, ANN001
            drop_hotfix="", yes=False, simulate=False, model=None):
    """Make the next generation of each instrument beside the running one (images staged, new OS and Apps
    children, the next Settings disk, migrations committed): the running VMs are never stopped or touched."""
    with context() as ctx:
        insts = facts.select(ctx, group=group, instruments=instruments, everything=all, kind="prepare")
        # a preparation never touches a running instrument: one that fails does not stop the others
        options = Options(parallel=int(parallel), canary="", force=force, drop_hotfixes=tuple(names(drop_hotfix)),
                          max_fail_percent=100)
        tm = TimeModel.load(Path(model) if model else None)
        if simulate:
            console.print(f"simulating the preparation of {len(insts)} instruments, --parallel={parallel}")
            prediction = preparing.simulate(ctx, insts, release, options, tm)
            print_prediction(prediction)
            page = pages.simulation_page(ctx, "prepare", f"release {release} (simulated)", insts, prediction,
                                         canary=False)
            console.print(f"drawn in {page}")
            return
        confirm(f"prepare {release} on {len(insts)} instruments (they keep running)?", yes)
        display = FleetDisplay(len(insts))
        print_recap(run_live(display, lambda: preparing.prepare_fleet(ctx, insts, release, options,
                                                                      progress=display, model=tm)))


@task(help={"group": "switch this group's instruments",
            "instruments": "comma-separated names, or @failed for the failures of the last switch",
            "all": "switch every instrument",
            "to": "prepared (default): the prepared generation; previous: back to what ran before; legacy or "
                  "current: an adopted instrument's old or new VM (one runs at a time)",
            "canary": "the instrument switched alone first (default: the first of the selection; 'none': no canary)",
            "batches": "wave sizes after the canary, e.g. 1,5,20% (the last size repeats); default 100%",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "max_fail_percent": "stop starting instruments when more than this share of a wave failed (default 10: a "
                                "failed canary stops the run; 100 keeps going on purpose)",
            "yes": "do not ask for confirmation (unattended runs)",
            "dry_run": "check every instrument is prepared and still current, then stop",
            "resume": "continue the interrupted switch (its record and the journal say where)",
            "simulate": "predict the switch window and each instrument's downtime; change nothing",
            "model": "a YAML file overriding the time model's defaults (see docs/deploy.md)"})
@reports_errors
def switch(c, group=None, instruments="", all=False, to="prepared", canary=None, batches="100%",  # noqa: A002, ANN001
           parallel=SWITCH_PARALLEL, max_fail_percent=DEFAULT_MAX_FAIL_PERCENT, yes=False, dry_run=False,
           resume=False, simulate=False, model=None):
    """The downtime part only: stop, back up Var, swap to the prepared disks, start, configure, check, in
    the deploy's waves. Refused before any change when an instrument is not prepared or its preparation is
    out of date."""
    tm = TimeModel.load(Path(model) if model else None)
    with context() as ctx:
        if resume:
            rec = switching.interrupted_run(ctx, "switch", None)
            display = FleetDisplay(len(rec["selection"]))
            console.print(f"resuming {rec['id']} ({len(rec['selection'])} instruments)")
            print_recap(run_live(display, lambda: switching.resume(ctx, run_id=rec["id"], model=tm,
                                                                   progress=display)))
            return
        options = Options(parallel=int(parallel), max_fail_percent=float(max_fail_percent),
                          canary="" if canary == "none" else canary, batches=batches)
        insts = facts.select(ctx, group=group, instruments=instruments, everything=all, kind="switch")
        if to in ("legacy", "current"):  # an adopted instrument's two sides: one instrument at a time
            for inst in insts:
                plan = sides.plan_for_side(ctx, inst, to)
                print_plan(plan, dry_run=dry_run)
                if dry_run:
                    continue
                confirm(f"switch {inst.name} to its {to} side? ({plan.notes[0]})", yes)
                print_outcome(sides.switch_side(ctx, inst.name, to, listener=StepPrinter()), inst.name, ctx.journal)
            return
        if simulate:
            prediction = switching.simulate(ctx, insts, options, tm)
            console.print(f"simulating the switch of {len(insts)} instruments, waves "
                          f"{' | '.join(str(len(w)) for w in prediction.summary.waves)}, --parallel={parallel}")
            print_prediction(prediction)
            page = pages.simulation_page(ctx, "switch", "the switch (simulated)", insts, prediction,
                                         canary=options.canary != "")
            console.print(f"drawn in {page}")
            return
        targets = switching.check_switchable(ctx, insts, to)
        for inst in insts:
            console.print(f"{inst.name}: {facts.running_release(ctx, inst) or '-'} -> "
                          f"{targets.get(inst.name, 'the generation it ran before')}")
        print_abort_rule([i.name for i in insts], options)
        if dry_run:
            console.print("[dim]dry run: nothing was changed[/]")
            return
        what = "back to what they ran before" if to == "previous" else "to their prepared generation"
        confirm(f"switch {len(insts)} instruments {what} (each is stopped for the switch)?", yes)
        display = FleetDisplay(len(insts))
        result = run_live(display, lambda: switching.switch_fleet(ctx, insts, options, to=to, model=tm,
                                                                  progress=display))
        print_recap(result)
        if result.failed:
            raise ImagingError(f"switch {result.id} did not finish cleanly; see the recap above and "
                               f"{result.report_md}")
