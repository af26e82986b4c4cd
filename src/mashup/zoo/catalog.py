"""The zoo catalog: one SQLite file (``catalog.sqlite``) in the zoo directory."""

from __future__ import annotations

import array
import json
import math
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mashup.errors import MashupError
from mashup.zoo.fingerprint import (
    Fingerprint,
    Kind,
    combine_digests,
    content_digests,
    file_digest,
    inspect_path,
)

CATALOG_NAME = "catalog.sqlite"
SCHEMA_VERSION = 1
# Long enough for another process's insert to finish; each transaction holds the lock briefly.
BUSY_TIMEOUT_MS = 60_000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@=-]*$")
KINDS = ("model", "adapter", "state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('model', 'adapter', 'state')),
    path TEXT NOT NULL,
    task TEXT NOT NULL,
    dataset TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    fingerprint TEXT NOT NULL,
    fingerprint_digest TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind);
CREATE INDEX IF NOT EXISTS entries_task ON entries (task);
CREATE INDEX IF NOT EXISTS entries_digest ON entries (fingerprint_digest);
CREATE TABLE IF NOT EXISTS scores (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    n INTEGER,
    meta TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (entry_id, target, metric)
);
CREATE INDEX IF NOT EXISTS scores_target ON scores (target, metric);
CREATE TABLE IF NOT EXISTS embeddings (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    vector BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (entry_id, key)
);
"""


@dataclass
class ZooEntry:
    """One registered checkpoint, adapter or state, referenced in place (never copied)."""

    name: str
    kind: Kind
    path: Path
    task: str
    dataset: str | None
    metrics: dict[str, float]
    fingerprint: Fingerprint
    content_hash: str
    created_at: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, shapes: bool = True) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "task": self.task,
            "dataset": self.dataset,
            "metrics": self.metrics,
            "fingerprint": self.fingerprint.to_dict(shapes=shapes),
            "content_hash": self.content_hash,
            "created_at": self.created_at,
            "meta": self.meta,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise MashupError(f"{what}: {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise MashupError(f"{what}: {value!r} is not a finite number")
    return number


def default_name(path: Path) -> str:
    """The entry name a path gets when none is given: its file or directory name, made safe."""
    stem = path.stem if path.is_file() else path.name
    cleaned = re.sub(r"[^A-Za-z0-9._+@=-]+", "-", stem).strip("-.") or "entry"
    return cleaned if cleaned[0].isalnum() else f"e{cleaned}"


def resolve_task(path: Path, fingerprint: Fingerprint, task: str | None) -> str:
    """The given task, or for a state file the task its metadata names."""
    task = task or fingerprint.meta.get("state", {}).get("task")
    if not task:
        raise MashupError(f"{path}: no task given", hint="pass --task NAME")
    return task


class Zoo:
    """A zoo directory and its catalog.

    Every change runs in one ``BEGIN IMMEDIATE`` transaction on a fresh connection, so several
    processes can add entries at once: SQLite serialises the writers (WAL mode, busy timeout) and
    a failed change rolls back completely.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.catalog_path = self.root / CATALOG_NAME

    @classmethod
    def open(cls, root: Path | str, *, create: bool = True) -> Zoo:
        """Open the zoo at ``root``, creating the directory and catalog if missing.

        With ``create=False`` a missing catalog is an error (read-only commands use this so
        a mistyped ``--zoo`` does not leave an empty zoo behind).
        """
        zoo = cls(Path(root))
        if zoo.root.exists() and not zoo.root.is_dir():
            raise MashupError(f"{zoo.root}: zoo path exists and is not a directory")
        if not create and not zoo.catalog_path.is_file():
            raise MashupError(
                f"{zoo.root}: no zoo catalog here ({CATALOG_NAME} is missing)",
                hint="check --zoo / MASHUP_ZOO, or add an entry first with mashup zoo add",
            )
        zoo.root.mkdir(parents=True, exist_ok=True)
        zoo._init_schema()
        return zoo

    def __repr__(self) -> str:
        return f"Zoo({str(self.root)!r})"

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(
                self.catalog_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise MashupError(f"{self.catalog_path}: cannot open the zoo catalog ({exc})") from exc
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise MashupError(f"{self.catalog_path}: zoo catalog error ({exc})") from exc
        finally:
            conn.close()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise MashupError(f"{self.catalog_path}: zoo catalog error ({exc})") from exc
        finally:
            conn.close()

    def _init_schema(self) -> None:
        conn = self._connect()
        try:
            # WAL lets readers run beside the single writer; the setting persists in the file.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise MashupError(f"{self.catalog_path}: cannot switch the catalog to WAL mode")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise MashupError(
                f"{self.catalog_path}: not a usable zoo catalog ({exc})",
                hint="point --zoo at another directory or move this file away",
            ) from exc
        conn.close()
        with self._transaction() as tx:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                tx.execute(statement)
            row = tx.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row["version"] > SCHEMA_VERSION:
                raise MashupError(
                    f"{self.catalog_path}: catalog schema version {row['version']} is newer "
                    f"than this mashup understands ({SCHEMA_VERSION})",
                    hint="upgrade mashup",
                )

    # -- entries -------------------------------------------------------------------------------

    def add(
        self,
        path: Path | str,
        task: str | None = None,
        dataset: str | None = None,
        metrics: dict[str, float] | None = None,
        name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ZooEntry:
        """Register ``path`` (read in place). The kind is detected from the files.

        ``task`` may be left out only for a state file whose metadata names its task. Without
        ``name`` the entry is named after the file or directory, with ``-2``, ``-3``... appended
        when another path already took that name; an explicit ``name`` that is taken is an error.
        """
        path = Path(path).expanduser().resolve()
        inspection = inspect_path(path)  # the slow part (hashing) runs outside the transaction
        fingerprint = inspection.fingerprint
        task = resolve_task(path, fingerprint, task)
        clean_metrics = {str(k): _finite(v, f"metric {k!r}") for k, v in (metrics or {}).items()}
        if name is not None and not NAME_PATTERN.match(name):
            raise MashupError(
                f"invalid entry name {name!r}",
                hint="use letters, digits and . _ + @ = -, starting with a letter or digit",
            )
        digests = content_digests(inspection, path)
        meta = {**fingerprint.meta, **(extra or {}), "files": digests}
        created_at = _now()
        base_name = name or default_name(path)

        with self._transaction() as tx:
            existing = tx.execute(
                "SELECT name FROM entries WHERE path = ?", (str(path),)
            ).fetchone()
            if existing is not None:
                raise MashupError(
                    f"{path}: already in zoo {self.root} as {existing['name']!r}",
                    hint=f"remove it first with: mashup zoo remove {existing['name']}",
                )
            final_name = base_name
            if name is not None:
                if self._exists(tx, name):
                    raise MashupError(
                        f"zoo {self.root} already has an entry named {name!r}",
                        hint="choose another --name, or remove the old entry",
                    )
            else:
                suffix = 2
                while self._exists(tx, final_name):
                    final_name = f"{base_name}-{suffix}"
                    suffix += 1
            entry = ZooEntry(
                name=final_name,
                kind=fingerprint.kind,
                path=path,
                task=task,
                dataset=dataset,
                metrics=clean_metrics,
                fingerprint=fingerprint,
                content_hash=combine_digests(digests),
                created_at=created_at,
                meta=meta,
            )
            tx.execute(
                "INSERT INTO entries (name, kind, path, task, dataset, metrics, fingerprint, "
                "fingerprint_digest, content_hash, created_at, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.name,
                    entry.kind,
                    str(entry.path),
                    entry.task,
                    entry.dataset,
                    json.dumps(entry.metrics),
                    json.dumps(fingerprint.to_dict(), default=str),
                    fingerprint.digest,
                    entry.content_hash,
                    entry.created_at,
                    json.dumps(entry.meta, default=str),
                ),
            )
        return entry

    @staticmethod
    def _exists(conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM entries WHERE name = ?", (name,)).fetchone() is not None

    def _entry_id(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM entries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise self._missing(name)
        return int(row["id"])

    def _missing(self, name: str) -> MashupError:
        return MashupError(
            f"zoo {self.root} has no entry named {name!r}", hint="see mashup zoo list"
        )

    def get(self, name: str) -> ZooEntry:
        with self._reader() as conn:
            row = conn.execute("SELECT * FROM entries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise self._missing(name)
        return _entry_from_row(row)

    def __contains__(self, name: object) -> bool:
        with self._reader() as conn:
            return isinstance(name, str) and self._exists(conn, name)

    def list(self, kind: str | None = None, task: str | None = None) -> list[ZooEntry]:
        if kind is not None and kind not in KINDS:
            raise MashupError(f"unknown kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
        query, params = "SELECT * FROM entries WHERE 1 = 1", []
        if kind is not None:
            query, params = query + " AND kind = ?", [*params, kind]
        if task is not None:
            query, params = query + " AND task = ?", [*params, task]
        with self._reader() as conn:
            rows = conn.execute(query + " ORDER BY name", params).fetchall()
        return [_entry_from_row(row) for row in rows]

    def remove(self, name: str) -> None:
        """Forget an entry and its cached scores; the files on disk are left alone."""
        with self._transaction() as tx:
            if tx.execute("DELETE FROM entries WHERE name = ?", (name,)).rowcount == 0:
                raise self._missing(name)

    def verify(self, name: str) -> list[str]:
        """What changed on disk since registration; ``[]`` when every hashed file is the same."""
        entry = self.get(name)
        recorded: dict[str, str] = entry.meta.get("files", {})
        if not entry.path.exists():
            return [f"{entry.path} no longer exists"]
        changes: list[str] = []
        for relative, digest in sorted(recorded.items()):
            file = entry.path if entry.path.is_file() else entry.path / relative
            if not file.is_file():
                changes.append(f"{relative} is missing")
            elif file_digest(file) != digest:
                changes.append(f"{relative} changed")
        return changes

    # -- scores --------------------------------------------------------------------------------

    def set_score(
        self,
        name: str,
        target: str,
        metric: str,
        value: float,
        n: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Cache one (entry, target, metric) score; a later call replaces it."""
        value = _finite(value, f"score {metric!r} of {name!r} on {target!r}")
        with self._transaction() as tx:
            entry_id = self._entry_id(tx, name)
            tx.execute(
                "INSERT INTO scores (entry_id, target, metric, value, n, meta, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (entry_id, target, metric) DO UPDATE "
                "SET value = excluded.value, n = excluded.n, meta = excluded.meta, "
                "updated_at = excluded.updated_at",
                (entry_id, target, metric, value, n, json.dumps(meta or {}), _now()),
            )

    def get_scores(self, target: str, metric: str) -> dict[str, float]:
        """Cached scores on ``target`` for ``metric``, by entry name."""
        return {name: value for name, (value, _) in self.get_score_records(target, metric).items()}

    def get_score_records(
        self, target: str, metric: str
    ) -> dict[str, tuple[float, dict[str, Any]]]:
        """Cached scores on ``target`` for ``metric`` and what was stored beside each, by entry."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT e.name, s.value, s.meta FROM scores s JOIN entries e "
                "ON e.id = s.entry_id WHERE s.target = ? AND s.metric = ? ORDER BY e.name",
                (target, metric),
            ).fetchall()
        return {row["name"]: (row["value"], json.loads(row["meta"])) for row in rows}

    def scores_of(self, name: str) -> list[dict[str, Any]]:
        """Every cached score of one entry (for ``zoo show``)."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT target, metric, value, n, meta, updated_at FROM scores "
                "WHERE entry_id = ? ORDER BY target, metric",
                (self._entry_id(conn, name),),
            ).fetchall()
        # Per-item values (kept for selection margins) would drown the listing: count them.
        out = []
        for r in rows:
            meta = json.loads(r["meta"])
            if "items" in meta:
                meta["items"] = len(meta["items"])
            out.append({**dict(r), "meta": meta})
        return out

    # -- embeddings ----------------------------------------------------------------------------

    def set_embedding(self, name: str, key: str, vector: list[float]) -> None:
        """Cache one vector of an entry (e.g. its training data's sentence-embedding centroid)
        under ``key`` (what it was computed from); a later call replaces it."""
        for value in vector:
            _finite(value, f"embedding {key!r} of {name!r}")
        blob = array.array("f", vector).tobytes()
        with self._transaction() as tx:
            entry_id = self._entry_id(tx, name)
            tx.execute(
                "INSERT INTO embeddings (entry_id, key, vector, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (entry_id, key) DO UPDATE SET vector = excluded.vector, "
                "updated_at = excluded.updated_at",
                (entry_id, key, blob, _now()),
            )

    def get_embedding(self, name: str, key: str) -> list[float] | None:
        """The vector cached for an entry under ``key``, or None."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT m.vector FROM embeddings m JOIN entries e ON e.id = m.entry_id "
                "WHERE e.name = ? AND m.key = ?",
                (name, key),
            ).fetchone()
        return None if row is None else array.array("f", row["vector"]).tolist()

    def integrity_check(self) -> str:
        with self._reader() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _entry_from_row(row: sqlite3.Row) -> ZooEntry:
    meta = json.loads(row["meta"])
    fingerprint = Fingerprint.from_dict(json.loads(row["fingerprint"]))
    return ZooEntry(
        name=row["name"],
        kind=row["kind"],
        path=Path(row["path"]),
        task=row["task"],
        dataset=row["dataset"],
        metrics=json.loads(row["metrics"]),
        fingerprint=fingerprint,
        content_hash=row["content_hash"],
        created_at=row["created_at"],
        meta=meta,
    )
