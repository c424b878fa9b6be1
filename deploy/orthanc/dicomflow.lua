-- dicomflow: tell the orthanc-watcher about every stable study (POST /v1/ingest/orthanc).
--
-- Load it with Orthanc's "LuaScripts" option, after a settings script that defines
--   DICOMFLOW_URL     = "http://dicomflow-orthanc-watcher:8112"   -- no trailing slash
--   DICOMFLOW_API_KEY = "dfk_..."   -- an API key with the `imports` permission (role ops), or
--   DICOMFLOW_SECRET  = "..."       -- the watcher's ORTHANC_WEBHOOK_SECRET
-- (see dicomflow-settings.example.lua). Unset globals fall back to the environment variables
-- of the same names. The watcher answers 202 and downloads the study's instances itself;
-- a study missed here (watcher down) is still taken in from Orthanc's /changes feed.

local function setting(name)
  local value = rawget(_G, name)
  if value == nil or value == "" then
    value = os.getenv(name)
  end
  return value
end

function OnStableStudy(studyId, tags, metadata)
  local url = setting("DICOMFLOW_URL")
  if url == nil then
    print("dicomflow: DICOMFLOW_URL is not set; study " .. studyId .. " not announced")
    return
  end
  local headers = { ["Content-Type"] = "application/json" }
  local key = setting("DICOMFLOW_API_KEY")
  local secret = setting("DICOMFLOW_SECRET")
  if key ~= nil then
    headers["Authorization"] = "Bearer " .. key
  end
  if secret ~= nil then
    headers["X-Dicomflow-Secret"] = secret
  end
  local body = DumpJson({ ID = studyId, Path = "Study" }, true)
  local answer = HttpPost(url .. "/v1/ingest/orthanc", body, headers)
  if answer == nil then
    print("dicomflow: announcing study " .. studyId .. " failed (the /changes feed catches up)")
  end
end
