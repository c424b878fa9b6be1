import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.index_publisher.bootstrap import wire
from services.index_publisher.config import IndexPublisherSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("index-publisher", load_settings(IndexPublisherSettings), wire))
    )
