"""spineloss."""
