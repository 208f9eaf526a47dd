"""The only code that runs Envoy or talks to its admin socket: validation,
publishing make-before-break with confirmation, start-up, and the live diff.
"""
