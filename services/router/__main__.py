import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.router.bootstrap import wire
from services.router.config import RouterSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("router", load_settings(RouterSettings), wire)))
