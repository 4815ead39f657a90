"""placeholder until the analyzer issue lands."""
