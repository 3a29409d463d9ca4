"""Geometry, CTF, sampling, masks, filters and resolution measures."""
