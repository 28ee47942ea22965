"""Data: the seeded per-phase example stream and the caches that serve frozen parts of the model from
features computed once."""
