import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.api.bootstrap import wire
from services.api.config import ApiSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("api", load_settings(ApiSettings), wire)))
