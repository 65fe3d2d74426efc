"""The Hydra preset groups (YAML files), on every recipe's search path."""
