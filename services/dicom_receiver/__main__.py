import asyncio

from libs.runtime import serve
from libs.settings import load_settings
from services.dicom_receiver.bootstrap import wire
from services.dicom_receiver.config import ReceiverSettings

if __name__ == "__main__":
    raise SystemExit(asyncio.run(serve("dicom-receiver", load_settings(ReceiverSettings), wire)))
