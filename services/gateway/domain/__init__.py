"""What the gateway does for each resource, against the broker: its behaviour, minus HTTP."""
