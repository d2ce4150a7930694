"""Report plots (`plots`: pure, DataFrames to figures) and what they read (`sources`)."""
