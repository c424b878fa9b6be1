import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.pacs_watcher.bootstrap import wire
from services.pacs_watcher.config import WatcherSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("pacs-watcher", load_settings(WatcherSettings), wire)))
