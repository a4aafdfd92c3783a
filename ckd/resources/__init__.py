"""Package data: published reference numbers (see paper_dev.md)."""
