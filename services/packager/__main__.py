import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.packager.bootstrap import wire
from services.packager.config import PackagerSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("packager", load_settings(PackagerSettings), wire)))
