"""CP / MTB pre-training without Ray: its config, batches, the step and its meter, the loop
(``run_steps``), held-out evaluation and resumable training state."""
