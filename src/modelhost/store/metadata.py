"""Metadata repository: models, endpoint configs, endpoints and tags in SQLite or PostgreSQL.

Called by the control plane and the controller, always from worker threads (see ``DatabaseExecutor``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from modelhost.store import tables


@dataclass(frozen=True, slots=True)
class ResourceRow:
    """A model or an endpoint config: the request as sent, plus what the service adds."""

    name: str
    arn: str
    creation_time: float
    request: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EndpointRow:
    name: str
    arn: str
    config_name: str
    status: str
    failure_reason: str | None
    creation_time: float
    last_modified_time: float
    variants: tuple[Mapping[str, Any], ...]
    deployment: Mapping[str, Any]
    pending_config_name: str | None = None
    pending_deployment: Mapping[str, Any] | None = None
    pending_variants: tuple[Mapping[str, Any], ...] | None = None
    pending_start_time: float | None = None
    deployment_config: Mapping[str, Any] | None = None
    revision: int = 0


class AlreadyExists(Exception):
    """An insert met an existing primary key."""


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest version; safe to run at every start."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def create_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the writer; NORMAL still survives a process crash.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


def _endpoint_from(row: sa.Row[Any]) -> EndpointRow:
    m = row._mapping
    return EndpointRow(
        name=m["name"],
        arn=m["arn"],
        config_name=m["config_name"],
        status=m["status"],
        failure_reason=m["failure_reason"],
        creation_time=m["creation_time"],
        last_modified_time=m["last_modified_time"],
        variants=tuple(m["variants"]),
        deployment=m["deployment"],
        pending_config_name=m["pending_config_name"],
        pending_deployment=m["pending_deployment"],
        pending_variants=tuple(m["pending_variants"]) if m["pending_variants"] is not None else None,
        pending_start_time=m["pending_start_time"],
        deployment_config=m["deployment_config"],
        revision=m["revision"],
    )


def _endpoint_values(row: EndpointRow) -> dict[str, Any]:
    values = dataclasses.asdict(row)
    values["variants"] = list(row.variants)
    if row.pending_variants is not None:
        values["pending_variants"] = list(row.pending_variants)
    return values


class MetadataStore:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str) -> MetadataStore:
        engine = create_engine(url)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self._engine.dispose()

    # Models and endpoint configs share one shape.

    def insert_resource(self, table: sa.Table, row: ResourceRow) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(table).values(dataclasses.asdict(row)))
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(row.name) from exc

    def get_resource(self, table: sa.Table, name: str) -> ResourceRow | None:
        with self._engine.connect() as conn:
            r = conn.execute(sa.select(table).where(table.c.name == name)).first()
        return ResourceRow(**r._mapping) if r else None

    def list_resources(self, table: sa.Table) -> list[ResourceRow]:
        with self._engine.connect() as conn:
            return [ResourceRow(**r._mapping) for r in conn.execute(sa.select(table))]

    def delete_resource(self, table: sa.Table, name: str) -> bool:
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(table).where(table.c.name == name)).rowcount > 0

    # Endpoints.

    def insert_endpoint(self, row: EndpointRow) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(tables.endpoints).values(_endpoint_values(row)))
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(row.name) from exc

    def get_endpoint(self, name: str) -> EndpointRow | None:
        t = tables.endpoints
        with self._engine.connect() as conn:
            r = conn.execute(sa.select(t).where(t.c.name == name)).first()
        return _endpoint_from(r) if r else None

    def list_endpoints(self) -> list[EndpointRow]:
        with self._engine.connect() as conn:
            return [_endpoint_from(r) for r in conn.execute(sa.select(tables.endpoints))]

    def save_endpoint(self, row: EndpointRow) -> bool:
        """Write ``row`` unless the endpoint was saved since ``row.revision`` was read (then False)."""
        t = tables.endpoints
        values = _endpoint_values(row)
        values["revision"] = row.revision + 1
        q = sa.update(t).where(t.c.name == row.name, t.c.revision == row.revision).values(values)
        with self._engine.begin() as conn:
            return conn.execute(q).rowcount > 0

    def delete_endpoint(self, name: str) -> bool:
        t = tables.endpoints
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(t).where(t.c.name == name)).rowcount > 0

    def arn_exists(self, arn: str) -> bool:
        with self._engine.connect() as conn:
            for t in (tables.models, tables.endpoint_configs, tables.endpoints):
                if conn.execute(sa.select(t.c.name).where(t.c.arn == arn)).first():
                    return True
        return False

    # Tags.

    def add_tags(self, arn: str, tags: Iterable[tuple[str, str]]) -> None:
        t = tables.tags
        with self._engine.begin() as conn:
            for key, value in tags:
                conn.execute(sa.delete(t).where(t.c.resource_arn == arn, t.c.key == key))
                conn.execute(sa.insert(t).values(resource_arn=arn, key=key, value=value))

    def list_tags(self, arn: str) -> list[tuple[str, str]]:
        t = tables.tags
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.key, t.c.value).where(t.c.resource_arn == arn).order_by(t.c.key)
            )
            return [(r.key, r.value) for r in rows]

    def count_tags(self, arn: str) -> int:
        t = tables.tags
        with self._engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(t).where(t.c.resource_arn == arn)
            return int(conn.execute(q).scalar_one())

    def delete_tags(self, arn: str, keys: Iterable[str] | None = None) -> None:
        t = tables.tags
        q = sa.delete(t).where(t.c.resource_arn == arn)
        if keys is not None:
            q = q.where(t.c.key.in_(list(keys)))
        with self._engine.begin() as conn:
            conn.execute(q)
