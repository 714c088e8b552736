"""quantise stage."""
