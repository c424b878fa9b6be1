import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.packager.bootstrap import wire
from services.packager.config import PackagerSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("packager", load_settings(PackagerSettings), wire)))
