"""Example task modules; each documents one part of the task-module contract."""
