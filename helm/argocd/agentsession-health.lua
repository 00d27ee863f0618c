-- Argo CD health of corral.dev/AgentSession, from status.phase and the Ready condition.
-- Install as argocd-cm key resource.customizations.health.corral.dev_AgentSession
-- (docs/install.md); tests/unit/test_helm_schema.py runs it against real statuses.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Corral operator"
  return hs
end
if status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to see generation " .. obj.metadata.generation
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
local phase = status.phase
hs.message = phase
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = phase .. ": " .. ready.message
end
if phase == "Running" then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
  else
    hs.status = "Progressing"
  end
elseif phase == "Idle" or phase == "Succeeded" then
  -- Idle: a Hybrid session scaled to zero on purpose; Succeeded: an Ephemeral run done.
  hs.status = "Healthy"
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Failed" or phase == "CrashLooping" then
  hs.status = "Degraded"
elseif ready ~= nil and ready.status == "False" and (ready.reason == "SecretNotFound"
    or ready.reason == "SecretNotLabelled" or ready.reason == "BaseUrlNotAllowed"
    or ready.reason == "NoCredentials"
    or ready.reason == "ImagePullFailed" or ready.reason == "ContainerConfigError"
    or ready.reason == "SpecTooLarge" or ready.reason == "RunnerNotReady") then
  -- Pending on something only a person can fix, or a runner (or its node) that was ready
  -- and stopped answering.
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs
