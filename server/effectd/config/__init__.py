"""Configuration: defaults, then the TOML file, then command-line flags, as strict models."""
