"""The gateway: LangGraph Platform's HTTP API over the thread log."""
