import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.nas_watcher.bootstrap import wire
from services.nas_watcher.config import NasWatcherSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("nas-watcher", load_settings(NasWatcherSettings), wire)))
