-- wrk script for the `token` test of run.sh (benches/load): every request carries a viewer token as ?token=…
--
--   wrk -t T -c C -d D -s token.lua URL -- TOKENS_FILE T [NAME]
--
-- TOKENS_FILE holds one token a line (tokens.py). NAME is the query parameter (default token; viewers.sh passes vs,
-- for viewer session ids). Thread i of T takes lines i, i+T, i+2T, … and cycles through them,
-- one token per request, so the C connections together use all the tokens, each many times. TOKENS_FILE "-" sends
-- URL unchanged through the same code (same client cost): the reference for servers without a token check.
-- The requests are built once in init(); request() only picks the next one.

local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local file, threads, name = args[1], tonumber(args[2] or "1"), args[3] or "token"
  local sep = string.find(wrk.path, "?", 1, true) and "&" or "?"
  requests = {}
  if file and file ~= "-" then
    local i = 0
    for line in io.lines(file) do
      if line ~= "" then
        if i % threads == id then
          requests[#requests + 1] = wrk.format(nil, wrk.path .. sep .. name .. "=" .. line)
        end
        i = i + 1
      end
    end
    if #requests == 0 then
      error("token.lua: no token for thread " .. id .. " in " .. file)
    end
  else
    requests[1] = wrk.format(nil, wrk.path)
  end
  n = #requests
  k = 0
end

function request()
  k = k % n + 1
  return requests[k]
end
