"""Task modules of this project: `tasks/a/b.py` is the task named `a.b`."""
