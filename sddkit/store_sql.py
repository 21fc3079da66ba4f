"""`sddkit ls` on a local sqlite store without importing MLflow (its import alone costs as much as torch's):
read-only SQL on the tables MLflow's client reads. A store of another schema version than the pinned MLflow's, or
lacking a column, returns ``None``: the caller reads it through MLflow (a schema change costs speed, never a
wrong listing)."""
from __future__ import annotations

import contextlib
import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = "dc11669786a5"  # alembic head of mlflow 3.17 (pyproject's range; a test holds them together)
COLUMNS = {
    "experiments": {"experiment_id", "name", "lifecycle_stage", "artifact_location"},
    "experiment_tags": {"experiment_id", "key", "value"},
    "runs": {"run_uuid", "name", "status", "start_time", "experiment_id", "lifecycle_stage", "artifact_uri"},
    "tags": {"run_uuid", "key", "value"},
    "params": {"run_uuid", "key", "value"},
    "latest_metrics": {"run_uuid", "key", "value", "is_nan"},
}
# The trajectories of one experiment, as Tracker.trajectories finds them (MLflow's order: newest first, ties by ID).
PARENTS = """select r.run_uuid from runs r join tags k on k.run_uuid = r.run_uuid
             where r.experiment_id = ? and r.lifecycle_stage = 'active'
               and k.key = 'sddkit.kind' and k.value = 'trajectory'"""


@dataclass
class RunInfo:
    run_id: str
    run_name: str
    status: str
    experiment_id: str
    start_time: int


@dataclass
class RunData:
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """The fields of an ``mlflow.entities.Run`` that the listing reads."""
    info: RunInfo
    data: RunData


@dataclass
class Listing:
    runs: list[Run]  # newest first
    finished_rounds: Counter  # trajectory run ID -> its FINISHED round runs
    experiment_tags: dict[str, str]


def read_listing(db: Path, experiment: str) -> Listing | None:
    """The trajectories of ``experiment`` in the sqlite store ``db``; ``None`` where this reader cannot vouch for
    the schema."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
            return read(con, experiment) if schema_known(con) else None
    except sqlite3.Error:
        return None  # not a database, damaged, locked: MLflow says what is wrong


def read(con: sqlite3.Connection, experiment: str) -> Listing | None:
    ids = [row[0] for row in con.execute(
        "select experiment_id from experiments where name = ? and lifecycle_stage = 'active'", (experiment,))]
    if len(ids) != 1:  # none: an empty listing; several (MLflow workspaces): let MLflow choose
        return Listing([], Counter(), {}) if not ids else None
    return Listing(parent_runs(con, ids[0]), finished_rounds(con, ids[0]),
                   dict(con.execute("select key, value from experiment_tags where experiment_id = ?", ids)))


def schema_known(con: sqlite3.Connection) -> bool:
    if con.execute("select version_num from alembic_version").fetchall() != [(SCHEMA_VERSION,)]:
        return False
    for table, needed in COLUMNS.items():
        if not needed <= {row[1] for row in con.execute(f"pragma table_info({table})")}:
            return False
    return True


def parent_runs(con: sqlite3.Connection, experiment_id) -> list[Run]:
    rows = con.execute(f"""select r.run_uuid, r.name, r.status, r.start_time from runs r
                           where r.run_uuid in ({PARENTS}) order by r.start_time desc, r.run_uuid""",
                       (experiment_id,)).fetchall()
    runs = {uuid: Run(RunInfo(uuid, name, status, str(experiment_id), start), RunData())
            for uuid, name, status, start in rows}
    for table, attribute in (("params", "params"), ("tags", "tags")):
        for uuid, key, value in con.execute(f"select run_uuid, key, value from {table} where run_uuid in ({PARENTS})",
                                            (experiment_id,)):
            getattr(runs[uuid].data, attribute)[key] = value
    for uuid, key, value, is_nan in con.execute(
            f"select run_uuid, key, value, is_nan from latest_metrics where run_uuid in ({PARENTS})", (experiment_id,)):
        runs[uuid].data.metrics[key] = math.nan if is_nan else value  # MLflow stores a NaN as 0 with is_nan set
    return list(runs.values())


def finished_rounds(con: sqlite3.Connection, experiment_id) -> Counter:
    rows = con.execute("""select p.value, count(*) from runs r
                          join tags k on k.run_uuid = r.run_uuid and k.key = 'sddkit.kind' and k.value = 'round'
                          join tags p on p.run_uuid = r.run_uuid and p.key = 'mlflow.parentRunId'
                          where r.experiment_id = ? and r.lifecycle_stage = 'active' and r.status = 'FINISHED'
                          group by p.value""", (experiment_id,))
    return Counter(dict(rows))
