"""Dataset readers and sample structures."""
