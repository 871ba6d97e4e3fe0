"""The control socket: newline-delimited JSON over a Unix socket, roles from peer credentials."""
