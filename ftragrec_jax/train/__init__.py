"""The training loop shared by DuoRec pretraining and FTragrec fine-tuning (see loop.py and task.py)."""
