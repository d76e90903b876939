"""The store: every SQL statement dirt runs lives in this package."""
