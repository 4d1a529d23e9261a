"""Devices, their certificates and onboarding: registry, PKI, cut-off, provisioning."""
