"""Validated sites to Envoy resources and file bytes, and the bootstraps; pure: no
I/O. One listener builder serves both the LDS file and `envoy --mode validate`.
"""
