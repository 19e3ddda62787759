"""Rate-limit policies: one file each, as agentgateway keeps them."""
