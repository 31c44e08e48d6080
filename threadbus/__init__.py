"""threadbus: an event-sourced LangGraph agent server on NATS JetStream."""

__version__ = "0.1.0"
