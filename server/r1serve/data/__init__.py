"""Text and templates the tiny checkpoint is built from."""
