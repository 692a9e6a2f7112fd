"""The vocabulary every layer shares: errors and their codes, provider names, addresses,
the clock, the token value type, and the text rules for secrets (redaction) and logs
(sanitising). Pure: no I/O, no framework; imports nothing else of the broker."""
