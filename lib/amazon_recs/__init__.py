"""Amazon-style reviews to personalised top-10 recommendations, on Spark."""

__version__ = "0.1.0"
