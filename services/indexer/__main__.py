import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.indexer.bootstrap import wire
from services.indexer.config import IndexerSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("indexer", load_settings(IndexerSettings), wire)))
