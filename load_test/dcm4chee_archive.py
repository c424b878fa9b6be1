"""A dcm4chee archive database for the tests and `make bench`: a fresh database each time,
created from the dcm4chee-arc-light 5.35 DDL (PostgreSQL, MariaDB) or from the legacy 2.x
columns (MariaDB, PostgreSQL), and rows inserted the way the archive inserts them (every NOT
NULL column, `*` for empty)."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncmy
import asyncpg

PG_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
MARIADB_URL = "mysql://root@127.0.0.1:3306"
ARC_DDL_DIR = "dcm4chee-arc-5.35"

# The legacy dcm4chee 2.x tables, with the columns the watcher reads (issue 4).
DCM4CHEE2_DDL = """
CREATE TABLE filesystem (pk BIGINT AUTO_INCREMENT PRIMARY KEY, dirpath VARCHAR(255) NOT NULL);
CREATE TABLE patient (pk BIGINT AUTO_INCREMENT PRIMARY KEY, pat_id VARCHAR(64),
  pat_name VARCHAR(255), pat_birthdate VARCHAR(255), pat_sex VARCHAR(16),
  updated_time DATETIME);
CREATE TABLE study (pk BIGINT AUTO_INCREMENT PRIMARY KEY, patient_fk BIGINT NOT NULL,
  study_iuid VARCHAR(255) NOT NULL UNIQUE, study_datetime DATETIME, study_desc VARCHAR(255),
  accession_no VARCHAR(64), mods_in_study VARCHAR(255), num_series INT, num_instances INT,
  updated_time DATETIME, FOREIGN KEY (patient_fk) REFERENCES patient (pk));
CREATE TABLE series (pk BIGINT AUTO_INCREMENT PRIMARY KEY, study_fk BIGINT NOT NULL,
  series_iuid VARCHAR(255) NOT NULL UNIQUE, modality VARCHAR(16), num_instances INT,
  FOREIGN KEY (study_fk) REFERENCES study (pk));
CREATE TABLE instance (pk BIGINT AUTO_INCREMENT PRIMARY KEY, series_fk BIGINT NOT NULL,
  sop_iuid VARCHAR(255) NOT NULL UNIQUE, sop_cuid VARCHAR(255),
  FOREIGN KEY (series_fk) REFERENCES series (pk));
CREATE TABLE files (pk BIGINT AUTO_INCREMENT PRIMARY KEY, instance_fk BIGINT,
  filesystem_fk BIGINT, filepath VARCHAR(255) NOT NULL, file_size BIGINT,
  file_md5 VARCHAR(255), file_tsuid VARCHAR(255),
  FOREIGN KEY (instance_fk) REFERENCES instance (pk),
  FOREIGN KEY (filesystem_fk) REFERENCES filesystem (pk));
"""

# The same tables as dcm4chee 2.x creates them on PostgreSQL (its create-psql DDL: SERIAL8
# keys, TIMESTAMP without time zone, the same names).
DCM4CHEE2_PG_DDL = """
CREATE TABLE filesystem (pk SERIAL8 PRIMARY KEY, dirpath VARCHAR(255) NOT NULL);
CREATE TABLE patient (pk SERIAL8 PRIMARY KEY, pat_id VARCHAR(64), pat_name VARCHAR(255),
  pat_birthdate VARCHAR(255), pat_sex VARCHAR(16), updated_time TIMESTAMP);
CREATE TABLE study (pk SERIAL8 PRIMARY KEY, patient_fk INT8 NOT NULL REFERENCES patient (pk),
  study_iuid VARCHAR(255) NOT NULL UNIQUE, study_datetime TIMESTAMP, study_desc VARCHAR(255),
  accession_no VARCHAR(64), mods_in_study VARCHAR(255), num_series INT4, num_instances INT4,
  updated_time TIMESTAMP);
CREATE TABLE series (pk SERIAL8 PRIMARY KEY, study_fk INT8 NOT NULL REFERENCES study (pk),
  series_iuid VARCHAR(255) NOT NULL UNIQUE, modality VARCHAR(16), num_instances INT4);
CREATE TABLE instance (pk SERIAL8 PRIMARY KEY, series_fk INT8 NOT NULL REFERENCES series (pk),
  sop_iuid VARCHAR(255) NOT NULL UNIQUE, sop_cuid VARCHAR(255));
CREATE TABLE files (pk SERIAL8 PRIMARY KEY, instance_fk INT8 REFERENCES instance (pk),
  filesystem_fk INT8 REFERENCES filesystem (pk), filepath VARCHAR(255) NOT NULL,
  file_size INT8, file_md5 VARCHAR(255), file_tsuid VARCHAR(255));
"""


def arc_ddl_dir() -> Path:
    """The reference DDL in shared/ beside the repository (or DCM4CHEE_ARC_DDL_DIR)."""
    if os.environ.get("DCM4CHEE_ARC_DDL_DIR"):
        return Path(os.environ["DCM4CHEE_ARC_DDL_DIR"])
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data" / ARC_DDL_DIR
        if candidate.is_dir():
            return candidate
    raise AssertionError(f"shared/data/{ARC_DDL_DIR} not found above {here}")


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip().rstrip(";").strip()]


class Sql(Protocol):
    async def insert(self, table: str, values: dict[str, Any]) -> int: ...
    async def execute(self, sql: str, *args: Any) -> None: ...
    async def close(self) -> None: ...


class PgSql:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def insert(self, table: str, values: dict[str, Any]) -> int:
        cols = ", ".join(values)
        marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
        pk: int = await self.conn.fetchval(
            f"INSERT INTO {table} (pk, {cols}) VALUES (nextval('{table}_pk_seq'), {marks})"
            " RETURNING pk",
            *values.values(),
        )
        return pk

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(sql, *args)

    async def close(self) -> None:
        await self.conn.close()


class MySql:
    def __init__(self, conn: asyncmy.Connection) -> None:
        self.conn = conn

    async def insert(self, table: str, values: dict[str, Any]) -> int:
        cols = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        async with self.conn.cursor() as cur:
            await cur.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values())
            )
            return int(cur.lastrowid)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.conn.cursor() as cur:
            await cur.execute(re.sub(r"\$\d+", "%s", sql), args)

    async def close(self) -> None:
        await self.conn.ensure_closed()


@dataclass
class Instance:
    series_uid: str
    sop_uid: str
    storage: str  # storage_id (5.x) or filesystem dirpath (2.x)
    path: str
    size: int
    modality: str = "CT"
    status: int = 0


class Writer(Protocol):
    async def add_study(
        self,
        *,
        patient_id: str,
        patient_name: str,
        study_uid: str,
        description: str,
        when: datetime,
    ) -> int: ...
    async def add_instance(self, study_pk: int, inst: Instance, when: datetime) -> None: ...
    async def touch_study(self, study_pk: int, when: datetime, description: str) -> None: ...
    async def delete_study(self, study_pk: int) -> None: ...


STAR3 = {"custom1": "*", "custom2": "*", "custom3": "*"}


def customs(prefix: str) -> dict[str, str]:
    return {f"{prefix}_{k}": v for k, v in STAR3.items()}


class Arc5Writer:
    """Rows as dcm4chee-arc-light 5.x writes them when it stores an instance."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.series: dict[str, int] = {}

    async def _blob(self) -> int:
        return await self.sql.insert("dicomattrs", {"attrs": b"\x00"})

    async def add_study(
        self,
        *,
        patient_id: str,
        patient_name: str,
        study_uid: str,
        description: str,
        when: datetime,
    ) -> int:
        name = await self.sql.insert(
            "person_name",
            {"alphabetic_name": patient_name, "ideographic_name": "*", "phonetic_name": "*"},
        )
        patient = await self.sql.insert(
            "patient",
            {
                "created_time": when,
                "failed_verifications": 0,
                "num_studies": 1,
                "pat_birthdate": "19700101",
                "pat_sex": "F",
                "updated_time": when,
                "verification_status": 0,
                "dicomattrs_fk": await self._blob(),
                "pat_name_fk": name,
                **customs("pat"),
            },
        )
        await self.sql.insert(
            "patient_id",
            {
                "pat_id": patient_id,
                "entity_id": "HOSP",
                "pat_name": "*",
                "entity_uid": "*",
                "entity_uid_type": "*",
                "patient_fk": patient,
            },
        )
        return await self.sql.insert(
            "study",
            {
                "access_time": when,
                "accession_no": f"A{patient_id}",
                "admission_id": "*",
                "completeness": 0,
                "created_time": when,
                "study_deleting": False,
                "expiration_state": 0,
                "ext_retrieve_aet": "*",
                "failed_retrieves": 0,
                "modified_time": when,
                "rejection_state": 0,
                "study_size": -1,
                "study_date": "20240115",
                "study_desc": description,
                "study_id": "*",
                "study_iuid": study_uid,
                "study_time": "101500",
                "updated_time": when,
                "dicomattrs_fk": await self._blob(),
                "patient_fk": patient,
                **customs("study"),
            },
        )

    async def add_instance(self, study_pk: int, inst: Instance, when: datetime) -> None:
        if inst.series_uid not in self.series:
            self.series[inst.series_uid] = await self.sql.insert(
                "series",
                {
                    "body_part": "CHEST",
                    "completeness": 0,
                    "compress_failures": 0,
                    "created_time": when,
                    "expiration_state": 0,
                    "ext_retrieve_aet": "*",
                    "failed_retrieves": 0,
                    "stgver_failures": 0,
                    "inst_purge_state": 0,
                    "institution": "*",
                    "department": "*",
                    "laterality": "*",
                    "metadata_update_failures": 0,
                    "metadata_update_load_objects": False,
                    "modality": inst.modality,
                    "modified_time": when,
                    "pps_cuid": "*",
                    "pps_iuid": "*",
                    "pps_start_date": "*",
                    "pps_start_time": "*",
                    "rejection_state": 0,
                    "series_desc": "Axial",
                    "series_iuid": inst.series_uid,
                    "series_no": 1,
                    "series_size": -1,
                    "sop_cuid": "1.2.840.10008.5.1.4.1.1.2",
                    "station_name": "*",
                    "tsuid": "1.2.840.10008.1.2.1",
                    "updated_time": when,
                    "dicomattrs_fk": await self._blob(),
                    "study_fk": study_pk,
                    **customs("series"),
                },
            )
        instance = await self.sql.insert(
            "instance",
            {
                "availability": 0,
                "sr_complete": "*",
                "content_date": "*",
                "content_time": "*",
                "created_time": when,
                "ext_retrieve_aet": "*",
                "inst_no": 1,
                "sop_cuid": "1.2.840.10008.5.1.4.1.1.2",
                "sop_iuid": inst.sop_uid,
                "updated_time": when,
                "sr_verified": "*",
                "dicomattrs_fk": await self._blob(),
                "series_fk": self.series[inst.series_uid],
                **customs("inst"),
            },
        )
        await self.sql.insert(
            "location",
            {
                "created_time": when,
                "object_type": 0,
                "object_size": inst.size,
                "status": inst.status,
                "storage_id": inst.storage,
                "storage_path": inst.path,
                "tsuid": "1.2.840.10008.1.2.1",
                "instance_fk": instance,
            },
        )

    async def touch_study(self, study_pk: int, when: datetime, description: str) -> None:
        await self.sql.execute(
            "UPDATE study SET updated_time = $1, modified_time = $2, study_desc = $3 WHERE pk = $4",
            when,
            when,
            description,
            study_pk,
        )

    async def delete_study(self, study_pk: int) -> None:
        """As the archive deletes a study: its locations, instances, series, then itself."""
        for statement in (
            "DELETE FROM location WHERE instance_fk IN (SELECT i.pk FROM instance i"
            " JOIN series se ON se.pk = i.series_fk WHERE se.study_fk = $1)",
            "DELETE FROM instance WHERE series_fk IN (SELECT pk FROM series WHERE study_fk = $1)",
            "DELETE FROM series WHERE study_fk = $1",
            "DELETE FROM study WHERE pk = $1",
        ):
            await self.sql.execute(statement, study_pk)
        self.series.clear()  # the pks of the series deleted are gone


class Dcm4chee2Writer:
    """Rows as dcm4chee 2.x writes them (updated_time to the second: ties are common)."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.series: dict[str, int] = {}
        self.filesystems: dict[str, int] = {}

    async def add_study(
        self,
        *,
        patient_id: str,
        patient_name: str,
        study_uid: str,
        description: str,
        when: datetime,
    ) -> int:
        patient = await self.sql.insert(
            "patient",
            {
                "pat_id": patient_id,
                "pat_name": patient_name,
                "pat_birthdate": "19700101",
                "pat_sex": "F",
                "updated_time": when,
            },
        )
        return await self.sql.insert(
            "study",
            {
                "patient_fk": patient,
                "study_iuid": study_uid,
                "study_datetime": datetime(2024, 1, 15, 10, 15),
                "study_desc": description,
                "accession_no": f"A{patient_id}",
                "mods_in_study": "CT",
                "num_series": 0,
                "num_instances": 0,
                "updated_time": when,
            },
        )

    async def add_instance(self, study_pk: int, inst: Instance, when: datetime) -> None:
        if inst.storage not in self.filesystems:
            self.filesystems[inst.storage] = await self.sql.insert(
                "filesystem", {"dirpath": inst.storage}
            )
        if inst.series_uid not in self.series:
            self.series[inst.series_uid] = await self.sql.insert(
                "series",
                {
                    "study_fk": study_pk,
                    "series_iuid": inst.series_uid,
                    "modality": inst.modality,
                    "num_instances": 0,
                },
            )
        instance = await self.sql.insert(
            "instance",
            {
                "series_fk": self.series[inst.series_uid],
                "sop_iuid": inst.sop_uid,
                "sop_cuid": "1.2.840.10008.5.1.4.1.1.2",
            },
        )
        await self.sql.insert(
            "files",
            {
                "instance_fk": instance,
                "filesystem_fk": self.filesystems[inst.storage],
                "filepath": inst.path,
                "file_size": inst.size,
                "file_md5": "",
                "file_tsuid": "1.2.840.10008.1.2.1",
            },
        )
        await self.sql.execute(
            "UPDATE study SET num_instances = num_instances + 1, updated_time = $1 WHERE pk = $2",
            when,
            study_pk,
        )

    async def touch_study(self, study_pk: int, when: datetime, description: str) -> None:
        await self.sql.execute(
            "UPDATE study SET updated_time = $1, study_desc = $2 WHERE pk = $3",
            when,
            description,
            study_pk,
        )

    async def delete_study(self, study_pk: int) -> None:
        """As dcm4chee 2.x deletes a study: its files, instances, series, then itself."""
        for statement in (
            "DELETE FROM files WHERE instance_fk IN (SELECT i.pk FROM instance i"
            " JOIN series se ON se.pk = i.series_fk WHERE se.study_fk = $1)",
            "DELETE FROM instance WHERE series_fk IN (SELECT pk FROM series WHERE study_fk = $1)",
            "DELETE FROM series WHERE study_fk = $1",
            "DELETE FROM study WHERE pk = $1",
        ):
            await self.sql.execute(statement, study_pk)
        self.series.clear()  # the pks of the series deleted are gone


@dataclass
class ArchiveDatabase:
    """What a test gets: the URL to give the watcher, and a writer for rows."""

    kind: str  # arc5-postgresql, arc5-mariadb, dcm4chee2-mariadb, dcm4chee2-postgresql
    url: str
    schema: str
    dialect: str
    writer: Writer
    sql: Sql
    name: str


async def create_pg(*scripts: str) -> tuple[str, Sql]:
    name = f"dcm4chee_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(f"{PG_SERVER}/{name}")
    for script in scripts:
        await conn.execute(script)
    return name, PgSql(conn)


async def create_pg_arc5() -> tuple[str, Sql]:
    ddl = arc_ddl_dir()
    return await create_pg(
        (ddl / "create-psql.sql").read_text(), (ddl / "create-fk-index.sql").read_text()
    )


async def drop_pg(name: str) -> None:
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def create_mariadb(script: str) -> tuple[str, Sql]:
    name = f"dcm4chee_{uuid.uuid4().hex[:12]}"
    admin = await asyncmy.connect(**MARIADB, autocommit=True)
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    finally:
        await admin.ensure_closed()
    conn = await asyncmy.connect(**MARIADB, db=name, autocommit=True, charset="utf8mb4")
    async with conn.cursor() as cur:
        for statement in statements(script):
            await cur.execute(statement)
    return name, MySql(conn)


async def drop_mariadb(name: str) -> None:
    admin = await asyncmy.connect(**MARIADB, autocommit=True)
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        await admin.ensure_closed()


async def open_archive(kind: str) -> ArchiveDatabase:
    if kind == "arc5-postgresql":
        name, sql = await create_pg_arc5()
        return ArchiveDatabase(
            kind, f"{PG_SERVER}/{name}", "arc5", "postgresql", Arc5Writer(sql), sql, name
        )
    if kind == "arc5-mariadb":
        name, sql = await create_mariadb((arc_ddl_dir() / "create-mariadb.sql").read_text())
        return ArchiveDatabase(
            kind, f"{MARIADB_URL}/{name}", "arc5", "mysql", Arc5Writer(sql), sql, name
        )
    if kind == "dcm4chee2-postgresql":
        name, sql = await create_pg(DCM4CHEE2_PG_DDL)
        return ArchiveDatabase(
            kind, f"{PG_SERVER}/{name}", "dcm4chee2", "postgresql", Dcm4chee2Writer(sql), sql, name
        )
    name, sql = await create_mariadb(DCM4CHEE2_DDL)
    return ArchiveDatabase(
        kind, f"{MARIADB_URL}/{name}", "dcm4chee2", "mysql", Dcm4chee2Writer(sql), sql, name
    )


async def close_archive(db: ArchiveDatabase) -> None:
    await db.sql.close()
    if db.dialect == "postgresql":
        await drop_pg(db.name)
    else:
        await drop_mariadb(db.name)
