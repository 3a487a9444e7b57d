"""The adapter core: events, rules, scheduling, dispatch and wiring."""
