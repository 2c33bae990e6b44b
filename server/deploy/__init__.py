"""fedshield deployment helpers: credentials and a local TLS + SuperNode-auth federation."""
