"""The orchestrator: the only component that decides what happens on a thread."""
