"""Planning: a policy resolved against a model into per-phase plans, the phase schedule, the prefix cut
points, and the plan's text and picture. Nothing here trains."""
