"""The service runtime: lifecycle (`service.Runtime`), the ops probes (/health, /ready,
/metrics), metrics, logging and the sandboxed process pool for untrusted parsing."""
