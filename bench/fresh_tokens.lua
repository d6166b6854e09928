-- wrk script: each request carries the next token of the file $TOKENS (one per line), so no
-- token repeats within a run; `done` fails the run if it needed more tokens than the file has.
local tokens, next_token = {}, 1

function init(args)
  for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
end

function request()
  local token = tokens[next_token]
  if token == nil then
    -- Out of tokens: send none, so the run shows non-2xx answers instead of a repeated token.
    return wrk.format("GET", nil, {})
  end
  next_token = next_token + 1
  return wrk.format("GET", nil, { ["Authorization"] = token })
end
