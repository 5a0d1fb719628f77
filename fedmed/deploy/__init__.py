"""Deployment: provisioning startup kits and running Flower SuperLink / SuperNode processes."""
