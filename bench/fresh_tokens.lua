-- wrk script: each request carries the next token of the file $TOKENS (one per line), so no
-- token repeats within a run; `done` fails the run if it needed more tokens than the file has.
-- $METHOD and $BODY (JSON) make it another request than a GET: the API server's own row POSTs
-- a SelfSubjectReview, as `kubectl auth whoami` does.
local tokens, next_token = {}, 1
local method, body = os.getenv("METHOD") or "GET", os.getenv("BODY")

function init(args)
  for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
end

function request()
  local headers = {}
  if body then
    headers["Content-Type"] = "application/json"
  end
  local token = tokens[next_token]
  if token == nil then
    -- Out of tokens: send none, so the run shows non-2xx answers instead of a repeated token.
    return wrk.format(method, nil, headers, body)
  end
  next_token = next_token + 1
  headers["Authorization"] = token
  return wrk.format(method, nil, headers, body)
end
