"""Networks: the relation encoder (markers, blanks, types), the classifier head, the CNN baseline,
prototypical networks, the CP / MTB / MLM objectives, and recon checkpoints of encoders."""
