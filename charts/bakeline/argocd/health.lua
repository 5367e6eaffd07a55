-- Argo CD health check for Bakeline's custom resources (group bakeline.io): BakingJob,
-- Workflow, Lane and SLOPolicy. One script serves the four kinds (it branches on obj.kind);
-- argocd-cm.yaml beside it registers it under resource.customizations.health.bakeline.io_<Kind>.
--
-- It reads only what the operator writes to status: phase, state, observedGeneration and
-- metav1.Condition-shaped conditions. Until the operator has seen the current generation the
-- object is Progressing, so a sync never reports Healthy on a stale status.
-- Lua 5.1 (Argo CD runs gopher-lua); tests/integration/test_chart.py runs it with lupa.

local hs = {}

local function condition(status, wanted)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function holds(status, wanted)
  local c = condition(status, wanted)
  return c ~= nil and c.status == "True", c
end

local function said(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Bakeline operator"
  return hs
end

local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if obj.kind == "BakingJob" then
  local phase = status.phase or "Pending"
  local progress = status.progress or ""
  if phase == "Succeeded" then
    local _, c = holds(status, "Succeeded")
    hs.status = "Healthy"
    hs.message = said(c, "Baked") .. " (" .. progress .. ")"
  elseif phase == "Failed" then
    local _, c = holds(status, "Failed")
    hs.status = "Degraded"
    hs.message = said(c, "The job failed")
  elseif phase == "Suspended" then
    hs.status = "Suspended"
    hs.message = "spec.suspend is true"
  else
    local _, c = holds(status, "Progressing")
    hs.status = "Progressing"
    hs.message = phase .. " " .. progress .. ": " .. said(c, "")
  end
  return hs
end

if obj.kind == "Workflow" then
  local invalid, bad = holds(status, "Invalid")
  local ready, c = holds(status, "Ready")
  if invalid then
    hs.status = "Degraded"
    hs.message = said(bad, "The workflow is invalid")
  elseif ready then
    hs.status = "Healthy"
    hs.message = said(c, "Valid")
  else
    hs.status = "Progressing"
    hs.message = said(c, "Waiting for validation")
  end
  return hs
end

if obj.kind == "Lane" then
  local frozen, f = holds(status, "Frozen")
  local ready, c = holds(status, "Ready")
  if frozen then
    -- An SLOPolicy froze the lane: its error budget burned. Worth a look, so Degraded.
    hs.status = "Degraded"
    hs.message = "Frozen: " .. said(f, "an SLOPolicy froze this lane")
  elseif ready then
    hs.status = "Healthy"
    hs.message = said(c, "Admitting")
  elseif c ~= nil then
    -- stopPolicy Hold / HoldAndDrain: admission paused on purpose.
    hs.status = "Suspended"
    hs.message = said(c, "Admission held")
  else
    hs.status = "Progressing"
    hs.message = "Waiting for the operator"
  end
  return hs
end

if obj.kind == "SLOPolicy" then
  local ready, c = holds(status, "Ready")
  local state = status.state or "Healthy"
  if condition(status, "Ready") ~= nil and not ready then
    hs.status = "Degraded"
    hs.message = said(c, "The policy cannot be evaluated")
  elseif state == "Exhausted" or state == "Burning" then
    local _, b = holds(status, "Burning")
    hs.status = "Degraded"
    hs.message = state .. ": " .. said(b, "the error budget is burning")
  elseif ready then
    hs.status = "Healthy"
    hs.message = said(c, "Evaluated")
  else
    hs.status = "Progressing"
    hs.message = "Waiting for the first evaluation"
  end
  return hs
end

hs.status = "Unknown"
hs.message = "Not a Bakeline kind: " .. tostring(obj.kind)
return hs
