"""The adelie test project's own code: its data loader and a feature transformer its
model uses (so the bento must ship this package)."""
