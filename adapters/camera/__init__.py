"""Camera sources, chosen by name from a registry and imported lazily (see base.open_camera)."""
