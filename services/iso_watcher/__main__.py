import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.iso_watcher.bootstrap import wire
from services.iso_watcher.config import IsoWatcherSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("iso-watcher", load_settings(IsoWatcherSettings), wire)))
