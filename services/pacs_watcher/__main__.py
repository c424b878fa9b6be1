import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.pacs_watcher.bootstrap import wire
from services.pacs_watcher.config import WatcherSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("pacs-watcher", load_settings(WatcherSettings), wire)))
