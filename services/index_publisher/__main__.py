import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.index_publisher.bootstrap import wire
from services.index_publisher.config import IndexPublisherSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("index-publisher", load_settings(IndexPublisherSettings), wire))
    )
