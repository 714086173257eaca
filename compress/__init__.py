"""Stage 3: structural pruning with torch-pruning, then fine-tuning under distillation."""
