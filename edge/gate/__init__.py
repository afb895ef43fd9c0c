"""The gate on one lane: daemon loop, pure policy, relay, frame sources, audit log, sd_notify."""
