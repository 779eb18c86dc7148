-- Argo CD health of a neuraxis.dev Dataset. The operator follows kstatus (Ready, Reconciling,
-- Stalled, observedGeneration); the phase adds what a person wants to read.
local hs = {status = "Progressing", message = "Waiting for the operator"}
local st = obj.status
if st == nil or st.observedGeneration ~= obj.metadata.generation then
  return hs
end
if st.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = "Table version " .. tostring(st.version) .. ", " .. tostring(st.rows) .. " rows"
  if st.qualityPassed == false then
    hs.status = "Degraded"
    hs.message = hs.message .. "; quality expectations failed"
  end
elseif st.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = st.message or "Failed"
else
  hs.message = st.phase .. ": " .. (st.message or "")
end
return hs
