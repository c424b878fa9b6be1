-- Copy next to dicomflow.lua, fill in, and list it first in Orthanc's "LuaScripts":
--   "LuaScripts": ["/etc/orthanc/dicomflow-settings.lua", "/etc/orthanc/dicomflow.lua"]
-- Keep this file readable by Orthanc only: it holds a credential.
DICOMFLOW_URL = "http://127.0.0.1:8112"
DICOMFLOW_API_KEY = ""   -- an API key of role ops (or admin): dicomflow apikey create --role ops
DICOMFLOW_SECRET = ""    -- or the watcher's ORTHANC_WEBHOOK_SECRET
