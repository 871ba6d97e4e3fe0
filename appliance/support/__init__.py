"""'jbc support-bundle': everything a support desk needs, no secret, no call content."""
