"""The metadata store on a real SQLite file: migrations match the tables, and saves lock optimistically."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from modelhost.store import tables
from modelhost.store.metadata import EndpointRow, MetadataStore, ResourceRow


def _row(**kw: object) -> EndpointRow:
    base: dict[str, object] = dict(
        name="ep",
        arn="arn:ep",
        config_name="c",
        status="Creating",
        failure_reason=None,
        creation_time=1.0,
        last_modified_time=1.0,
        variants=({"VariantName": "A", "DesiredWeight": 1.0, "DesiredInstanceCount": 1},),
        deployment={"id": "d1"},
    )
    base.update(kw)
    return EndpointRow(**base)  # type: ignore[arg-type]


def test_migrations_build_exactly_the_declared_tables(tmp_path: Path) -> None:
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    inspector = sa.inspect(store._engine)
    for table in tables.metadata.sorted_tables:
        got = {c["name"] for c in inspector.get_columns(table.name)}
        assert got == {c.name for c in table.columns}, table.name
    store.close()
    # A second open upgrades nothing and keeps the data.
    again = MetadataStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    assert again.list_endpoints() == []
    again.close()


def test_upgrade_from_the_first_schema_keeps_rows(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(tables.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO endpoints (name, arn, config_name, status, creation_time, last_modified_time, "
                "variants, deployment) "
                "VALUES ('old', 'arn:old', 'c', 'InService', 1, 1, '[]', '{\"id\": \"d\"}')"
            )
        )
    engine.dispose()
    store = MetadataStore.open(url)
    (row,) = store.list_endpoints()
    assert (row.name, row.status, row.revision) == ("old", "InService", 0)
    store.close()


def test_saves_lose_to_a_newer_revision(tmp_path: Path) -> None:
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    store.insert_endpoint(_row())
    read_by_controller = store.get_endpoint("ep")
    read_by_api = store.get_endpoint("ep")
    assert read_by_controller is not None and read_by_api is not None
    assert store.save_endpoint(_row(status="Deleting", revision=read_by_api.revision))
    assert not store.save_endpoint(_row(status="InService", revision=read_by_controller.revision))
    final = store.get_endpoint("ep")
    assert final is not None and (final.status, final.revision) == ("Deleting", 1)
    store.close()


def test_resources_and_tags(tmp_path: Path) -> None:
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    store.insert_resource(tables.models, ResourceRow("m", "arn:m", 1.0, {"ModelName": "m"}))
    assert store.arn_exists("arn:m") and not store.arn_exists("arn:x")
    store.add_tags("arn:m", [("b", "2"), ("a", "1")])
    store.add_tags("arn:m", [("a", "3")])
    assert store.list_tags("arn:m") == [("a", "3"), ("b", "2")]
    store.delete_tags("arn:m", ["a"])
    assert store.count_tags("arn:m") == 1
    assert store.delete_resource(tables.models, "m") and not store.delete_resource(tables.models, "m")
    store.close()
