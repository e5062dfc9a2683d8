"""The ``sonofed`` command: one sub-command per role (hospital, vendor, console)."""
