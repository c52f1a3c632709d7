"""Measurement without a server: protocol and its presets (protocol_presets), calibration, fingerprint, backends."""
