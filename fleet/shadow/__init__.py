"""Device shadows (desired/reported state sync): the shadow job's domain rules."""
