"""Configuration data: trigger rules, templates, per-facility mappings."""
