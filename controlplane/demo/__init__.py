"""`make demo` and the stand-in upstreams the tests and the demo start; nothing in
the product imports it.
"""
