"""The model zoo's data: manifest.json and the shipped checkpoints (see README.md here). No code."""
