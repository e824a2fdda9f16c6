"""The floor every layer stands on: typed configs and their defaults, errors, hashing, atomic writes,
the named protocols, storage (one URI for every node), the one ``ray.init``, privacy (telemetry off,
secrets redacted), layered YAML and console output.

Imports nothing of ``data_prep``, ``models`` or ``orchestration``; needs the standard library, pyyaml,
pydantic and pyarrow, and imports Ray only inside :mod:`recon.core.ray_session`'s functions.
"""
