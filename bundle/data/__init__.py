"""Reading EM volumes, per-slice items, points and centre densities."""
