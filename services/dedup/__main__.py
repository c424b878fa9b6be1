import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.dedup.bootstrap import wire
from services.dedup.config import DedupSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("dedup", load_settings(DedupSettings), wire)))
