import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.reconciler.bootstrap import wire
from services.reconciler.config import ReconcilerSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("reconciler", load_settings(ReconcilerSettings), wire)))
