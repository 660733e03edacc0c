"""The engine: the one API every front-end calls (`core.Engine`) and the services behind it."""
