"""invoke task modules, one per area; `tasks.py` composes them into one flat namespace."""
