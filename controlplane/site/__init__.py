"""The site file's contract, in the user's words: plain data and the rules of its
spelling. No I/O, no YAML, no Envoy.
"""
