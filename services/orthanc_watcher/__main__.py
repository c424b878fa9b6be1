import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.orthanc_watcher.bootstrap import wire
from services.orthanc_watcher.config import OrthancWatcherSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("orthanc-watcher", load_settings(OrthancWatcherSettings), wire))
    )
