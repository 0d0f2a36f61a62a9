"""What deploy/lint.py and its check modules share: the problem list, paths, YAML, commands."""

import os
import subprocess

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("OVERWATCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "overwatch")
PROBLEMS = []


def problem(where, msg):
    PROBLEMS.append("%s: %s" % (os.path.relpath(where, ROOT) if os.path.isabs(where) else where, msg))


def path(*p):
    return os.path.join(ROOT, *p)


def load_yaml(file, multi=False):
    try:
        with open(file) as f:
            return list(yaml.safe_load_all(f)) if multi else yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        problem(file, "does not parse as YAML: %s" % e)
        return None


def run(cmd, where, cwd=None, env=None, timeout=120):
    """The command's stdout, or False after recording why it failed."""
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        problem(where, "%s is not installed (run `make provision`)" % cmd[0])
        return False
    if r.returncode != 0:
        problem(where, "`%s` failed:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
        return False
    return r.stdout


def clean_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERWATCH_")}
    env.update(extra)
    return env
