"""Wire-protocol pieces shared by the server and the SDK (no I/O, no server imports)."""
