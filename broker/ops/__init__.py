"""What operators see and keep: metrics, logs, the audit trail, token files (sinks),
atomic file writes and the collector's settings. The engine reports to these."""
