"""Operating the gateway on a host: systemd units (render, install, drift) and the command runner seam.

Not engine: the engine never installs anything; the CLI's `service` commands call this package.
"""
