"""Models: encoders with entity markers, relation heads, CP/MTB objectives, CNN, prototypical networks,
and the one training loop. Needs only torch and transformers (no Ray, MLflow or spaCy), so GPU
benchmarks run with those two alone.
"""
