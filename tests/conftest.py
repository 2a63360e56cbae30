"""Shared test configuration: hypothesis profiles, deterministic torch, small threads."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BITPRESS_QUIET", "1")
settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))
