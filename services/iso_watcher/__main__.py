import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.iso_watcher.bootstrap import wire
from services.iso_watcher.config import IsoWatcherSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("iso-watcher", load_settings(IsoWatcherSettings), wire)))
