"""The default XLA flags: added once, never over a user's own setting."""

import os
import subprocess
import sys

from jaxface import xla_flags

FLAG = "xla_cpu_experimental_ynn_fusion_type"


def test_adds_defaults_to_empty_environment():
  env = {}
  added = xla_flags.apply(env)
  assert added == [f"--{FLAG}="]
  assert env["XLA_FLAGS"] == f"--{FLAG}="
  assert xla_flags.apply(env) == []  # idempotent
  assert env["XLA_FLAGS"] == f"--{FLAG}="


def test_keeps_the_users_flags_and_values():
  env = {"XLA_FLAGS": f"--xla_dump_to=/tmp/x --{FLAG}=kConvolution"}
  assert xla_flags.apply(env) == []
  assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x --{FLAG}=kConvolution"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  xla_flags.apply(env)
  assert env["XLA_FLAGS"] == (
      f"--xla_force_host_platform_device_count=2 --{FLAG}=")


def test_opt_out():
  env = {xla_flags.OPT_OUT: "0"}
  assert xla_flags.apply(env) == []
  assert "XLA_FLAGS" not in env


def test_importing_jaxface_sets_them_before_jax_starts():
  code = ("import os, jaxface, jax; jax.devices(); "
          "print(os.environ['XLA_FLAGS'])")
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", xla_flags.OPT_OUT)}
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True).stdout
  assert f"--{FLAG}=" in out.split()
