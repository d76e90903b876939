"""The dispatcher: pair waiting tasks with nodes, run them over execnet, store the outcome."""
