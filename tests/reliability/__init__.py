"""The reliability and security suite (issue 8): faults, bad input, abuse, with figures."""
