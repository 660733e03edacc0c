"""The SQLite journal: append-only events, a projection kept in step with them, and replay."""
