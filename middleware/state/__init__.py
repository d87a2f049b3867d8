"""Live state shared by replicas: ``[state] backend = "redis"`` (memory needs nothing here)."""
