"""Datasets, synthetic RGB-D video, training and evaluation."""
