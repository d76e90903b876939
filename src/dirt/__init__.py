"""dirt: oversight and tracking of remotely executed jobs."""

__version__ = "0.1.0"
