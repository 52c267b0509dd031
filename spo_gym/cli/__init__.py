"""The ``spo-gym`` command line: one sub-command group per package."""

from __future__ import annotations

import typer

from spo_gym.cli import data as _data
from spo_gym.cli import envs as _envs
from spo_gym.cli import eval as _eval
from spo_gym.cli import grade as _grade
from spo_gym.cli import models as _models
from spo_gym.cli import nano as _nano
from spo_gym.cli import run as _run
from spo_gym.cli import sandbox as _sandbox
from spo_gym.cli import train as _train

app = typer.Typer(
    name="spo-gym",
    help="Agentic tool-integrated RL: sandbox, tool environments, rollouts, SPO training.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(_sandbox.app, name="sandbox")
app.add_typer(_models.app, name="models")
app.add_typer(_envs.app, name="envs")
app.add_typer(_data.app, name="data")
app.command("grade")(_grade.grade)
app.command("run")(_run.run)
app.command("eval")(_eval.eval_command)
app.command("train")(_train.train)
app.command("nano")(_nano.nano)


def main() -> None:
    """Console-script entry point."""
    app()
