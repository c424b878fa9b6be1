"""PostgreSQL access: the pool, migrations, and one repository module per concern."""

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Repositories accept a plain connection or one borrowed from the pool.
Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
