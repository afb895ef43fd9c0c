"""The gate on one lane: the loop (daemon), pure policy, relay, frame sources, audit log, sd_notify."""
