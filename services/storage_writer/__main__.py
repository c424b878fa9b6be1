import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.storage_writer.bootstrap import wire
from services.storage_writer.config import StorageWriterSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("storage-writer", load_settings(StorageWriterSettings), wire))
    )
