"""Data input: the MVTec 3D-AD reader and writer, the paper's preprocessing, and synthetic samples."""
