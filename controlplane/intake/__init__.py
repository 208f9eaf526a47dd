"""Site files in: read them safely, judge each on its own and across sites, and
choose which version of each site may serve. `check` and the daemon share it.
"""
