"""The long-running loop: watching, one pass at a time, the status file, health,
metrics and the status page, systemd and signals.
"""
