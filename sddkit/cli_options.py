"""What the commands of ``sddkit.cli`` share: options (some taking several values), option types, the one-line
failure. Only click, rich and the config: ``sddkit --help`` stays instant."""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape  # a message may quote brackets: `.[ray]`, `[80, 120]`

from sddkit import command_settings, config as config_mod

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def resolve_config(preset: str | None, sets: tuple[str, ...], params_path: str | None,
                   root: Path) -> config_mod.Config:
    """params.yaml (``--params``, else the project root's) <- --preset <- --set; exit 2 if bad."""
    path = params_file(params_path, root)
    with config_errors():
        if params_path and not path.is_file():
            raise config_mod.ConfigError(f"--params {params_path}: no such file")
        params = config_mod.read_params_file(path) if path.is_file() else {}
        cfg = config_mod.load_config(params, preset=preset, overrides=list(sets))
    note = command_settings.schedule_note(cfg)
    if note:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    return cfg


def params_file(params_path: str | None, root: Path) -> Path:
    return Path(params_path) if params_path else root / "params.yaml"


@contextlib.contextmanager
def one_line(*errors: type[Exception], code: int = 1, prefix: str = ""):
    """``errors`` raised in the block end the command in one line."""
    try:
        yield
    except errors as exc:
        fail(f"{prefix}{exc}", code)


def config_errors():
    return one_line(config_mod.ConfigError, code=2, prefix="config: ")


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


class SpreadOptions(click.Command):
    """The options in ``spread`` take several values (``--seeds 0 1 2``), rewritten to click's repeated form
    before parsing. Put arguments before them."""
    spread: tuple[str, ...] = ()

    def parse_args(self, ctx, args):
        out, option = [], None
        for arg in args:
            if arg.startswith("-"):
                option = arg if arg in self.spread else None
            elif option is not None and out[-1] != option:
                out.append(option)
            out.append(arg)
        return super().parse_args(ctx, out)


def spreading(*options: str) -> type[click.Command]:
    return type("SpreadCommand", (SpreadOptions,), {"spread": options})


def options(*decorators):
    """Several click options as one decorator."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def config_options(set_help: str = "Override one config key; repeatable.",
                   params_help: str = "Config file (default: params.yaml at the project root)."):
    # The presets as a choice: a wrong name fails in one line listing them, and shell completion offers them.
    return options(
        click.option("--preset", default=None, type=click.Choice(config_mod.preset_names()),
                     help="Preset to start from (default: params.yaml's, else quick)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=set_help),
        click.option("--params", "params_path", default=None, help=params_help))


def grid_options(seeds_help: str):
    """What sweep and reproduce share."""
    return options(
        click.option("--seeds", multiple=True, type=click.IntRange(min=0), metavar="S [S ...]", help=seeds_help),
        click.option("--executor", type=click.Choice(config_mod.EXECUTORS), default=None,
                     help="local (processes here; the default) or ray (sweep.executor)."),
        click.option("--jobs", type=click.IntRange(min=0), default=None,
                     help="local: cells at a time (sweep.jobs; 0 = one per GPU, else one per CPU core)."))


def format_option(what: str):
    return click.option("--format", "table_format", type=click.Choice(config_mod.TABLE_FORMATS), default="table",
                        show_default=True, help=f"How {what} is printed: a table (full width, never cut, when "
                                                f"piped), or csv, json, markdown text on stdout.")


experiment_option = click.option("--experiment", default=None,
                                 help="MLflow experiment (default: the config's tracking.experiment).")
params_option = click.option("--params", "params_path", default=None,
                             help="Params file for tracking.uri (default: params.yaml).")


class FiniteRange(click.FloatRange):
    """click.FloatRange lets nan through every bound: this refuses nan and inf."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
