import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.extractor.bootstrap import wire
from services.extractor.config import ExtractorSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("extractor", load_settings(ExtractorSettings), wire)))
