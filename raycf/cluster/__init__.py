"""Joining Ray (embedded or a cluster), submitting a command as a Ray Job, and the few Ray internals raycf relies on."""
