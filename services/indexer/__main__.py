import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.indexer.bootstrap import wire
from services.indexer.config import IndexerSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("indexer", load_settings(IndexerSettings), wire)))
