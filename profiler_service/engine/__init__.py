"""Measurement without a server: protocol and presets, calibration, fingerprint, backends."""
