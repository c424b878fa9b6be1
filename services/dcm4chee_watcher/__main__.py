import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.dcm4chee_watcher.bootstrap import wire
from services.dcm4chee_watcher.config import Dcm4cheeWatcherSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("dcm4chee-watcher", load_settings(Dcm4cheeWatcherSettings), wire))
    )
