import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.jpg_converter.bootstrap import wire
from services.jpg_converter.config import JpgConverterSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("jpg-converter", load_settings(JpgConverterSettings), wire)))
