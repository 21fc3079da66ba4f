"""The ``sddkit`` command. Only click, rich and the config are imported at start-up; torch, timm and
mlflow are imported inside the commands so ``sddkit --help`` stays instant."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from sddkit import config as config_mod
from sddkit.paths import project_root

console = Console(stderr=True)
out = Console()


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def resolve_config(preset: str | None, sets: tuple[str, ...], params_path: str | None,
                   root: Path) -> config_mod.Config:
    """params.yaml (the given path, else the project root's, if any) <- --preset <- --set; exit 2 if bad."""
    path = Path(params_path) if params_path else root / "params.yaml"
    try:
        if params_path and not path.is_file():
            raise config_mod.ConfigError(f"--params {params_path}: no such file")
        params = config_mod.read_params_file(path) if path.is_file() else {}
        return config_mod.load_config(params, preset=preset, overrides=list(sets))
    except config_mod.ConfigError as exc:
        fail(f"config: {exc}", code=2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sddkit")
def main() -> None:
    """sddkit: reproduce and compare sparse double descent trajectories."""


@main.command()
@click.option("--preset", default=None, help="Preset to start from (default: params.yaml's, else quick).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one config key; repeatable.")
@click.option("--params", "params_path", default=None, help="Config file (default: params.yaml at the project root).")
@click.option("--force", is_flag=True, help="Start a new trajectory even if this config already ran.")
@click.option("--results", "results_dir", default=None, type=click.Path(file_okay=False),
              help="Also write summary.json, trajectory.csv and curve.png into this folder (for DVC).")
def run(preset, sets, params_path, force, results_dir) -> None:
    """Train, prune and retrain one trajectory, logging every round to MLflow.

    Rerunning the same config continues an interrupted trajectory from its last finished round; a
    finished one is reported, not redone (use --force for a new one).
    """
    root = project_root()
    cfg = resolve_config(preset, sets, params_path, root)
    from sddkit import runner
    try:
        runner.run_trajectory(cfg, root, force=force, results_dir=Path(results_dir) if results_dir else None)
    except runner.USER_ERRORS as exc:
        fail(str(exc))


@main.command()
def presets() -> None:
    """List the presets with a one-line description."""
    table = Table(title="presets")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name in config_mod.preset_names():
        table.add_row(name, config_mod.preset_description(name))
    out.print(table)


@main.command()
def keys() -> None:
    """List every config key (the names used by params.yaml, --set and MLflow params)."""
    table = Table(title="config keys")
    for column in ("key", "type", "meaning"):
        table.add_column(column)
    for row in config_mod.describe_keys():
        table.add_row(*row)
    out.print(table)


if __name__ == "__main__":
    main()
