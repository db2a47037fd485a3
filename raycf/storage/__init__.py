"""Where outputs live (a local path or an object store URI) and how they are written atomically."""
