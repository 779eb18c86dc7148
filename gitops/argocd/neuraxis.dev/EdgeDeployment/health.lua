-- Argo CD health of a neuraxis.dev EdgeDeployment: Available is Healthy, Paused is Suspended,
-- Failed is Degraded; while rolling out, the message counts the nodes.
local hs = {status = "Progressing", message = "Waiting for the operator"}
local st = obj.status
if st == nil or st.observedGeneration ~= obj.metadata.generation then
  return hs
end
local phases = {Available = "Healthy", Paused = "Suspended", Failed = "Degraded"}
hs.status = phases[st.phase] or "Progressing"
local nodes = tostring(st.readyNodes or 0) .. "/" .. tostring(st.targetedNodes or 0)
if st.phase == "Failed" then
  hs.message = st.message or "Failed"
else
  hs.message = st.phase .. ": " .. nodes .. " nodes ready, "
    .. tostring(st.updatedNodes or 0) .. " updated"
end
return hs
