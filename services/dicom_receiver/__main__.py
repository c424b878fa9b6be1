import asyncio

from libs.contracts.settings import load_settings
from libs.runtime.service import serve
from services.dicom_receiver.bootstrap import wire
from services.dicom_receiver.config import ReceiverSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("dicom-receiver", load_settings(ReceiverSettings), wire)))
