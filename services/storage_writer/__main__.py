import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.storage_writer.bootstrap import wire
from services.storage_writer.config import StorageWriterSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("storage-writer", load_settings(StorageWriterSettings), wire))
    )
