-- Argo CD health of a neuraxis.dev TrainingJob: Succeeded is Healthy, a suspended job
-- Suspended, a failed one Degraded; until the operator has seen this generation, Progressing.
local hs = {status = "Progressing", message = "Waiting for the operator"}
local st = obj.status
if st == nil or st.observedGeneration ~= obj.metadata.generation then
  return hs
end
local phases = {Succeeded = "Healthy", Failed = "Degraded", Suspended = "Suspended"}
hs.status = phases[st.phase] or "Progressing"
hs.message = st.message or st.phase
local p = st.progress
if st.phase == "Running" and p ~= nil and (p.epochs or 0) > 0 then
  hs.message = "Epoch " .. tostring(p.epoch or 0) .. "/" .. tostring(p.epochs)
    .. " (" .. tostring(p.percent or 0) .. "%)"
end
if st.phase == "Succeeded" and st.modelVersion ~= nil then
  hs.message = "Trained; registered as ModelVersion " .. st.modelVersion
end
return hs
