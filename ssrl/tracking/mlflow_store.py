"""MLflow store administration: opening a store (a SQLite one created atomically, repaired
after an interrupted creation or migration), pointing a moved store's artifact locations back
at its folder, and the saved UI views `ssrl mlflow-ui` links to. A job's run itself (and its
outage buffer) is `ssrl.tracking.mlflow_run`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ssrl.files import InputError

log = logging.getLogger("ssrl.tracking.mlflow_run")


def open_client(uri: str) -> Any:
    """An MlflowClient. For a SQLite store, the first client of a new database creates its
    tables; parallel jobs doing that at once corrupt the schema ("duplicate column name"), so
    opening is serialised with a lock file next to the database. Under that lock a missing
    database is created atomically and a half-created one is rebuilt (`ensure_sqlite_store`)."""
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ensure_sqlite_store(db)
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # creates or upgrades the tables now
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


_ALEMBIC_TMP = "_alembic_tmp_"


def _schema_state(db: Path) -> tuple[bool, int]:
    """(complete, runs held) of a SQLite MLflow store. Complete: its schema is at MLflow's
    latest revision with no leftover `_alembic_tmp_*` table of an interrupted migration.
    MLflow migrates a new database step by step, committing each step; a full disk or a kill
    in between leaves a schema it cannot migrate again ("table ... already exists")."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = con.execute("SELECT version_num FROM alembic_version").fetchone() \
            if "alembic_version" in tables else None
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    leftover = any(t.startswith(_ALEMBIC_TMP) for t in tables)
    complete = version is not None and version[0] == _get_latest_schema_revision()
    return complete and not leftover, runs


def _create_sqlite_store(db: Path) -> None:
    """A new MLflow database with every table, built under a temporary name and renamed onto
    `db`: a failure (a full disk) leaves no half-created database behind."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    tmp = db.parent / f".{db.name}.{os.getpid()}.tmp"
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)  # what MLflow runs on a new database
        finally:
            engine.dispose()
        for suffix in ("-journal", "-wal", "-shm"):  # of a discarded database: never apply them
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, db)
        _forget_connections(db)
    finally:
        for path in (tmp, Path(f"{tmp}-journal")):
            path.unlink(missing_ok=True)


def _forget_connections(db: Path) -> None:
    """Close this process's pooled MLflow connections to `db`'s former file (MLflow keeps one
    engine per URI): they would write to the replaced file ("readonly database")."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for uri, engine in list(SqlAlchemyStore._engine_map.items()):
        if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).resolve() == \
                db.resolve():
            engine.dispose()


def ensure_sqlite_store(db: Path) -> None:
    """Make `db` a complete MLflow store: create it atomically when missing; rebuild it when
    its creation was interrupted (no runs in it, so nothing is lost); for a half-migrated
    store holding runs, drop the leftover `_alembic_tmp_*` tables and rerun MLflow's own
    migration. Call with the store's lock held."""
    db = Path(db)
    if not db.exists() or db.stat().st_size == 0:
        _create_sqlite_store(db)
        return
    complete, runs = _schema_state(db)
    if complete:
        return
    if runs == 0:
        log.warning("%s: MLflow database left half-created (a full disk or a kill while it was "
                    "made); rebuilding it", db)
        _create_sqlite_store(db)
        return
    import sqlite3

    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db

    log.warning("%s: MLflow database left half-migrated (%d runs in it); rerunning MLflow's "
                "migration", db, runs)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in sorted(t for t in tables if t.startswith(_ALEMBIC_TMP)):
            original = table[len(_ALEMBIC_TMP):]
            con.execute(f'DROP TABLE "{table}"' if original in tables else
                        f'ALTER TABLE "{table}" RENAME TO "{original}"')
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        _upgrade_db(engine)
    finally:
        engine.dispose()


def relocate_artifacts(db: Path) -> int:
    """After a results folder was moved, point its SQLite store's artifact locations at the
    `mlartifacts/` folder beside the database again (MLflow stores them as absolute paths).
    Returns the number of experiments and runs updated."""
    import sqlite3
    from urllib.parse import unquote

    db = Path(db).resolve()
    if not db.is_file():
        raise InputError(f"{db}: no MLflow database")
    here = (db.parent / "mlartifacts").as_uri()
    changed = 0
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        for exp_id, location in rows:
            if not location or not location.startswith("file://") or "/mlartifacts/" not in \
                    location:
                continue
            old_root = location[:location.rindex("/mlartifacts/") + len("/mlartifacts")]
            if unquote(old_root) == unquote(here):
                continue
            new = here + location[len(old_root):]
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        (new, exp_id))
            cur = con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                              "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                              (here, len(old_root) + 1, exp_id, len(old_root), old_root))
            changed += 1 + cur.rowcount
    return changed


# --- the researcher's views: saved UI states the MLflow UI opens from a link --------------------
#: MLflow's UI restores a view saved as the experiment tag `mlflow.sharedViewState.<key>` when
#: its URL carries `?viewStateShareKey=<key>` (the UI's own "share view" mechanism).
SHARED_VIEW_TAG = "mlflow.sharedViewState."
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"  # the UI's first chart


def _col(kind: str, name: str) -> str:
    """A run-table column as the UI names it: metrics.`test/eer`, tags.`system`."""
    return f"{kind}.`{name}`"


def primary_metric(metric_keys: list[str]) -> str:
    """The first test list's EER: `test/eer`, or `test/<list>/eer` with several lists."""
    if "test/eer" in metric_keys:
        return "test/eer"
    found = sorted(k for k in metric_keys if re.fullmatch(r"test/[^/]+/eer", k))
    return found[0] if found else "test/eer"


def research_views(eer: str, switches: list[str]) -> dict[str, dict[str, Any]]:
    """Two saved views of an experiment. `systems`: every scored run (no sweep parents, no
    failed runs), flat, best test EER first, with the columns that answer "which system is
    best, did clusters fall, did NMI rise"; `ssrl`: the SSRL variants, their switches and
    `test/eer` as the charted metric (chart tab)."""
    scored = f"metrics.`{eer}` >= 0"
    answer = [_col("tags", "system"), _col("metrics", eer), _col("metrics", f"{eer}_low"),
              _col("metrics", f"{eer}_high"), _col("metrics", "labels/nmi"),
              _col("metrics", "labels/clusters"), _col("metrics", "compute/cumulative_passes"),
              _col("metrics", "compute/cumulative_minutes"),
              _col("metrics", "test/gap_closed")]
    order = {"orderByKey": _col("metrics", eer), "orderByAsc": True}
    section = {"uuid": "ssrl-test", "name": "SSRL variants: test EER", "display": True,
               "isReordered": False, "deleted": False, "isGenerated": False}
    charts = [{"uuid": "ssrl-eer-bar", "type": "BAR", "metricKey": eer, "deleted": False,
               "isGenerated": False, "metricSectionId": "ssrl-test", "runsCountToCompare": 100,
               "displayName": f"{eer} (%)"},
              {"uuid": "ssrl-eer-parallel", "type": "PARALLEL", "deleted": False,
               "isGenerated": False, "metricSectionId": "ssrl-test", "runsCountToCompare": 100,
               "selectedParams": [f"ssrl.{s}" for s in switches], "selectedMetrics": [eer],
               "showAllRuns": True}]
    ssrl_columns = [_col("tags", "variant"), *answer[1:6],
                    *(_col("params", f"ssrl.{s}") for s in switches)]

    def layout(columns: list[str]) -> dict[str, Any]:
        """The columns in this order (the run name first), wide enough for their names."""
        widths = {c: 230 if c == _col("tags", "system") else 190 if "compute/" in c else 100
                  for c in columns}
        return {"selectedColumns": columns, "columnOrder": [_col("tags", "mlflow.runName"),
                                                            *columns],
                "columnWidths": widths}

    return {
        "systems": {"searchFilter": scored, **order, **layout(answer),
                    "runsHiddenMode": "SHOW_ALL"},
        "ssrl": {"searchFilter": f"tags.stage = 'ssrl' and {scored}", **order,
                 **layout(ssrl_columns),
                 "runsHiddenMode": "SHOW_ALL", "compareRunCharts": charts,
                 "compareRunSections": [section], "isAccordionReordered": True,
                 "hideEmptyCharts": True},
    }


def install_views(uri: str, base_url: str | None = None,
                  experiment: str | None = None) -> dict[str, dict[str, str]]:
    """Save the research views on every experiment of the store (or just `experiment`) that
    holds scored runs;
    returns {experiment: {view: URL (relative to the UI's root, or under `base_url`)}}.
    The `ssrl` view charts the switches the SSRL runs differ in."""
    from mlflow.entities import ViewType

    client = open_client(uri)
    links: dict[str, dict[str, str]] = {}
    for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        if experiment is not None and exp.name != experiment:
            continue
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        keys = sorted({k for r in runs for k in r.data.metrics})
        if not any(k.startswith("test/") for k in keys):
            continue
        eer = primary_metric(keys)
        ssrl = [r for r in runs if r.data.tags.get("stage") == "ssrl"]
        varying = sorted({k.removeprefix("ssrl.") for r in ssrl for k, v in r.data.params.items()
                          if k.startswith("ssrl.")
                          and len({x.data.params.get(k) for x in ssrl}) > 1})
        client.set_experiment_tag(exp.experiment_id, PRIMARY_METRIC_TAG, eer)
        links[exp.name] = {}
        for name, state in research_views(eer, varying).items():
            client.set_experiment_tag(exp.experiment_id, SHARED_VIEW_TAG + name,
                                      json.dumps(state))
            # the runs tab in the UI's model-training mode (not its GenAI overview)
            query = f"workflowType=machine_learning&viewStateShareKey={name}" + (
                "&compareRunsMode=CHART" if name == "ssrl" else "")
            links[exp.name][name] = (f"{base_url or ''}/#/experiments/{exp.experiment_id}"
                                     f"/runs?{query}")
    return links
