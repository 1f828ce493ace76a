"""Training: DINO (stage 1), k-means pseudo labels, SSRL (stage 2) and the iterative baseline,
with what they share (devices and processes, schedules, the EMA teacher, checkpoints)."""
