"""Functional kernels: each file holds the fast form and its plain step-by-step reference."""
