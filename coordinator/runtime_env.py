"""cluster.runtime_env: what Ray sets up for a job's actors so that its own code (model.factory, data.factory)
imports on every node.

Ray uploads local `working_dir` and `py_modules` paths only for `ray.init`'s job-wide runtime env; a job's
actors are created later, in a Ray that may be shared with other jobs (`hes serve`). So the driver uploads them
itself (`resolve`, with Ray's own packaging: a content-addressed zip in the cluster's GCS) and the actors get
the gcs:// URIs, which every node fetches. A config whose paths are URIs already passes unchanged.
"""
from __future__ import annotations

import tempfile
from typing import Any

from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
from ray._private.runtime_env.working_dir import upload_working_dir_if_needed


def resolve(env: dict[str, Any] | None) -> dict[str, Any]:
    """`env` with its local working_dir and py_modules uploaded to the connected Ray (needs ray.init first)."""
    if not env:
        return {}
    out = dict(env)
    with tempfile.TemporaryDirectory(prefix="hes-runtime-env-") as scratch:
        out = upload_py_modules_if_needed(out, include_gitignore=True, scratch_dir=scratch)
        out = upload_working_dir_if_needed(out, include_gitignore=True, scratch_dir=scratch)
    out.pop("excludes", None)  # applied by the upload
    return out


def with_env_vars(env: dict[str, Any], env_vars: dict[str, str]) -> dict[str, Any]:
    """`env` plus environment variables of our own (they win over the job's of the same name)."""
    return {**env, "env_vars": {**env.get("env_vars", {}), **env_vars}}
