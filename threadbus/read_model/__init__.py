"""The read side: a PostgreSQL projection of the thread log, queried with indexes.

The log on the broker is the truth. Everything here is derived from it by the projector
(:mod:`threadbus.read_model.projector`), can be dropped and rebuilt from the log at any time, and
is written by nothing else.
"""
