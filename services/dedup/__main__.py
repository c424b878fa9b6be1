import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.dedup.bootstrap import wire
from services.dedup.config import DedupSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("dedup", load_settings(DedupSettings), wire)))
