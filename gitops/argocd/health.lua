-- Argo CD health check for eft.ai/EmbeddingFinetune (the operator's status: operator/status.py, operator/conditions.py).
--   Progressing  the operator has not observed the current spec yet (status.observedGeneration
--                behind metadata.generation, or no status at all), a stage is queued or running,
--                or the model is rolling out
--   Degraded     condition Failed=True (a stage failed, the quality gate rejected the model, the spec
--                is invalid), or phase Blocked (needs a change to the spec or to a conflicting object)
--   Suspended    spec.suspend with stages still to run: the pipeline is paused between stages (a
--                stage already running finishes first: Progressing until then)
--   Healthy      condition Ready=True (the tuned model is served), or Succeeded=True with serving
--                disabled (the exported model is the product)
-- Argo CD runs this with gopher-lua (Lua 5.1): `obj` is the live object, the script returns `hs`.
local hs = {}

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
local suspend = obj.spec ~= nil and obj.spec.suspend == true

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the eft operator to reconcile the resource"
  return hs
end

if status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the eft operator to observe generation " .. tostring(generation) ..
    " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local phase = status.phase or ""
local failed = condition(status, "Failed")
local ready = condition(status, "Ready")
local succeeded = condition(status, "Succeeded")
local progressing = condition(status, "Progressing")

if is_true(failed) or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(failed, status.message or "Failed")
  return hs
end

if phase == "Blocked" then
  hs.status = "Degraded"
  hs.message = status.message or text(progressing, "Blocked")
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, status.message or "Serving")
  return hs
end

if is_true(succeeded) and (phase == "Succeeded" or (ready ~= nil and ready.reason == "ServingDisabled")) then
  hs.status = "Healthy"
  hs.message = status.message or text(succeeded, "Pipeline complete")
  return hs
end

if phase == "Suspended" or (suspend and not is_true(progressing)) then
  hs.status = "Suspended"
  hs.message = status.message or "Suspended (spec.suspend)"
  return hs
end

if suspend then
  hs.status = "Progressing"
  hs.message = (status.message or phase) .. " (spec.suspend: pausing after this stage)"
  return hs
end

hs.status = "Progressing"
if status.message ~= nil and status.message ~= "" then
  hs.message = status.message
elseif phase ~= "" then
  hs.message = phase
else
  hs.message = text(progressing, "Waiting for the pipeline")
end
return hs
