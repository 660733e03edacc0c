"""`effectd demo`: the main job shown end to end, with no setup, no agent CLI and no network."""
