"""Ranking metrics over the full catalogue, the Markdown report and its plots.
May import the foundations (config, errors, schemas, io) and the model names only."""
