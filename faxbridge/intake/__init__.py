"""Pure functions: MIME → documents, addresses → numbers, rules → decisions."""
