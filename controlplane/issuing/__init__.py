"""Certificates ordered by ACME (HTTP-01) for sites with `tls: {acme: true}`: the files
on disk (`store`), one order against the ACME server (`ordering`), and the schedule that
runs orders beside the daemon's passes (`issuer`)."""
