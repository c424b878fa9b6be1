import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.backend_connector.bootstrap import wire
from services.backend_connector.config import ConnectorSettings

if __name__ == "__main__":
    raise SystemExit(
        asyncio.run(serve("backend-connector", load_settings(ConnectorSettings), wire))
    )
