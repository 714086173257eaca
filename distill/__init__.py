"""Stage 2: distil a student from a teacher's soft logits."""
