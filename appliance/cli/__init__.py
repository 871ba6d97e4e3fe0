"""jbc: the technician CLI, a thin client of jbcd's control socket."""
