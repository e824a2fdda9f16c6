"""Launchers: how recon reaches a cluster.

Each module here turns "run this recon command on N nodes" into what one kind of cluster understands
(``slurm``: an sbatch script that starts Ray inside the allocation), submits it, and follows or cancels
it; the command itself then runs exactly as on any Ray cluster (``ensure_ray`` joins the allocation's
Ray, storage and MLflow come from the storage URI and tracking URI every node can reach).
"""
