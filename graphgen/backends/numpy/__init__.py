"""The NumPy backend (the reference one)."""
