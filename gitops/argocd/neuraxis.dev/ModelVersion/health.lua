-- Argo CD health of a neuraxis.dev ModelVersion. Approved or Serving is Healthy unless a
-- condition says otherwise (a failed backtest sets Degraded; a canary rollback sets
-- CanaryRolledBack); Rejected (gates failed) and Failed are Degraded.
local hs = {status = "Progressing", message = "Waiting for the operator"}
local st = obj.status
if st == nil or st.observedGeneration ~= obj.metadata.generation then
  return hs
end
hs.message = st.message or st.phase
if st.phase == "Rejected" or st.phase == "Failed" then
  hs.status = "Degraded"
  return hs
end
if st.phase ~= "Approved" and st.phase ~= "Serving" then
  return hs
end
hs.status = "Healthy"
for _, c in ipairs(st.conditions or {}) do
  local bad = (c.type == "Degraded" or c.type == "CanaryRolledBack") and c.status == "True"
  if bad then
    hs.status = "Degraded"
    hs.message = c.reason .. ": " .. (c.message or "")
  end
end
return hs
