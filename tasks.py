"""The user's front door: the invoke tasks, gathered from ``imaging/cli/``. Task bodies live there; each one
parses its arguments, calls one function of ``imaging.ops`` and prints.

Run `invoke --list` for the tasks and `invoke --help <task>` for each task's options.
"""

from invoke import Collection

from imaging.cli import existing, fleet, instrument, releases, reports, settings, shutdown

ns = Collection()
for module in (instrument, fleet, shutdown, existing, settings, releases, reports):
    for task in Collection.from_module(module).tasks.values():
        ns.add_task(task)
