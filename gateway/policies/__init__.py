"""The policies of a route, one file each as agentgateway keeps them: each holds its
config schema, its runtime, and its admit and settle steps (apikey.py,
local_ratelimit.py, remote_ratelimit.py; budget.py is what the budget policies share)."""
