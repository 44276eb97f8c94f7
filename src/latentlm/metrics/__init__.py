"""Evaluation metrics shared by the systems."""
