"""Run folders: layout constants, atomic storage, and readers."""
