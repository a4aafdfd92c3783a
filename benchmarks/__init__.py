"""Performance benchmarks of the CKD relation terms and of whole training steps (`make bench`)."""
