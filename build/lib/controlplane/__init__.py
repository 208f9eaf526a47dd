"""controlplane: a file-based control plane for Envoy.

A folder of site files in; validated, atomically swapped CDS/LDS/RDS files out,
confirmed through Envoy's admin socket. See README.md for the data flow.
"""

__version__ = "0.1.0"
