-- A kernel pool of `size` for a strategy's branches, when the host has kernel.pool; nil otherwise (each
-- node then starts its own kernel, which works too, only with the start-up time on every node).
local host = require("host")
local kernel = require("kernel")

return function(size)
  if size <= 1 or type(kernel.pool) ~= "function" then return nil end
  local ex = host.config.exec or {}
  return kernel.pool({ size = size, gpus = ex.gpus })
end
