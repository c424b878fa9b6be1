import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.extractor.bootstrap import wire
from services.extractor.config import ExtractorSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("extractor", load_settings(ExtractorSettings), wire)))
