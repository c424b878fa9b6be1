import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.api.bootstrap import wire
from services.api.config import ApiSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("api", load_settings(ApiSettings), wire)))
