-- Argo CD health of a HybridWorkflow (qorch.io/v1alpha1), from the status the operator
-- writes (operator/qorch/orchestrator/plan.py, operator/qorch/operator/handlers.py):
--   no status, or a generation the operator has not seen yet  -> Progressing
--   phase Succeeded                                           -> Healthy
--   phase Failed (invalid spec, a subtask out of retries)     -> Degraded, with the
--                                                                failing condition
--   phase Pending/Running                                     -> Progressing, with the
--                                                                progress and what is
--                                                                under way (moves, retries)
--   ... but an edit of the spec that failed validation        -> Degraded (no new subtask
--                                                                starts until it is fixed)
-- Qorch has no suspend, so Suspended is never returned; Argo CD itself reports Missing.
--
-- Argo CD runs custom health scripts with the base, table and a restricted os library only
-- (unless resource.customizations.useOpenLibs.qorch.io_HybridWorkflow is "true"): no
-- string or math functions here, and no string methods, only `..`, `#` and table.concat.
-- The same script is embedded in argocd-cm-patch.yaml; tests/unit/test_gitops.py keeps
-- the two identical and runs the script on statuses made by the operator's planner.

local hs = {}

local function condition(status, wanted)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

-- "Reason: message", either part optional.
local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end

-- The condition that says why a workflow failed: Valid=False (its spec), then
-- Succeeded=False (a subtask), then any other False one.
local function failing(status)
  for _, wanted in ipairs({ "Valid", "Succeeded" }) do
    local c = condition(status, wanted)
    if c ~= nil and c.status == "False" then
      return c
    end
  end
  if type(status.conditions) == "table" then
    for _, c in ipairs(status.conditions) do
      if c.status == "False" then
        return c
      end
    end
  end
  return nil
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the workflow"
  return hs
end

local observed = status.observedGeneration
local behind = observed == nil or (generation ~= nil and observed < generation)

-- Terminal phases first: the operator stops reconciling a finished workflow, so an edit
-- made afterwards is never observed (and never run).
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  local c = condition(status, "Succeeded")
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    hs.message = c.message
  else
    hs.message = (status.progress or "all") .. " subtasks succeeded"
  end
  if behind and generation ~= nil then
    hs.message = hs.message .. "; generation " .. generation
      .. " is not run: a finished workflow does not restart"
  end
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  local c = failing(status)
  if c ~= nil then
    hs.message = describe(c)
  else
    hs.message = "Workflow failed"
  end
  return hs
end

if status.phase ~= "Pending" and status.phase ~= "Running" then
  hs.status = "Unknown"
  hs.message = "Unknown workflow phase " .. tostring(status.phase)
  return hs
end

local valid = condition(status, "Valid")
if behind then
  hs.status = "Progressing"
  if valid ~= nil and valid.status == "Unknown" then
    -- A circuit's ConfigMap not there yet (GitOps applies in any order): waited for.
    hs.message = describe(valid)
  elseif observed == nil or generation == nil then
    hs.message = "Waiting for the operator to validate the workflow"
  else
    hs.message = "Waiting for the operator to observe generation " .. generation
      .. " (observed " .. observed .. ")"
  end
  return hs
end

if valid ~= nil and valid.status == "False" then
  -- An edit that does not validate: what runs goes on, nothing new starts.
  hs.status = "Degraded"
  hs.message = describe(valid) .. "; no new subtask starts until the spec is fixed"
  return hs
end

local parts = { status.phase .. ": " .. (status.progress or "?") .. " subtasks succeeded" }
if type(status.subtasks) == "table" then
  for _, st in ipairs(status.subtasks) do
    if st.moving ~= nil and st.moving.to ~= nil then
      local from = ""
      if st.placement ~= nil and st.placement.name ~= nil then
        from = " from " .. st.placement.name
      end
      table.insert(parts, st.name .. " moving" .. from .. " to " .. (st.moving.to.kind or "")
        .. " " .. (st.moving.to.name or ""))
    elseif st.phase == "Retrying" then
      table.insert(parts, st.name .. " retrying: " .. (st.message or ""))
    elseif st.phase == "Pending" and st.message ~= nil and st.message ~= "" then
      table.insert(parts, st.name .. " waiting: " .. st.message)
    end
  end
end
local gateways = condition(status, "GatewaysReachable")
if gateways ~= nil and gateways.status == "False" then
  table.insert(parts, describe(gateways))
end
hs.status = "Progressing"
hs.message = table.concat(parts, "; ")
return hs
