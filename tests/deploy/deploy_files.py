"""Readers for the deployment files (Dockerfile, compose file, Kubernetes manifests) shared by the tests in
this folder. Fixtures built on them live in conftest.py."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from app.settings import Settings, env_name

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter-values.yaml"
KUSTOMIZATION = K8S / "kustomization.yaml"


# --- settings -------------------------------------------------------------------------------------------

def setting_env_names() -> set[str]:
    return {env_name(f.name) for f in fields(Settings)}


# --- Kubernetes -----------------------------------------------------------------------------------------

def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_manifest_paths() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


@dataclass(frozen=True)
class Manifests:
    documents: list[dict[str, Any]]

    def one(self, kind: str) -> dict[str, Any]:
        found = [d for d in self.documents if d["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def server_container(self) -> dict[str, Any]:
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    def configmap_env(self) -> dict[str, str]:
        return self.one("ConfigMap")["data"]


def load_manifests() -> Manifests:
    return Manifests([doc for path in k8s_manifest_paths() for doc in load_yaml_documents(path)])


# --- compose --------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_default(value: str) -> str:
    """A compose value with `${VAR:-default}` interpolations replaced by their defaults (empty when none)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


# --- Dockerfile -----------------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        pairs = (token.split("=", 1) for args in self.args_of("ENV") for token in shlex.split(args))
        return dict(pairs)

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON (exec) form of the last ENTRYPOINT/CMD, or of HEALTHCHECK's CMD."""
        args = self.args_of(keyword)[-1]
        if keyword == "HEALTHCHECK":
            args = args[args.index("CMD ") + 4:]
        return json.loads(args)

    def healthcheck_options(self) -> dict[str, str]:
        options = self.args_of("HEALTHCHECK")[-1].split(" CMD ")[0].split()
        return dict(option.removeprefix("--").split("=", 1) for option in options)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def default_target(self) -> Stage:
        return self.stages[-1]


def _logical_lines(text: str) -> list[str]:
    """Instructions with continuation lines joined and comment lines dropped (as Docker does)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = re.sub(r"\s+as\s+", " AS ", args, flags=re.I).partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base.strip())
            stages.append(Stage(base=base, name=name.strip()))
        elif not stages and keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


def final_stages(dockerfile: Dockerfile) -> list[Stage]:
    """The stages that are images someone runs (they have an ENTRYPOINT), not build stages."""
    return [s for s in dockerfile.stages if s.args_of("ENTRYPOINT")]


# --- .dockerignore --------------------------------------------------------------------------------------

def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `*` and `?` stay within one path segment, `**` spans segments."""
    pattern = pattern.strip("/").removeprefix("./")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignore_excludes(patterns_text: str, path: str) -> bool:
    """Whether the build context leaves out `path` (relative, '/'-separated): the last pattern that matches the
    path or one of its parent directories decides, `!` patterns re-including."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for line in patterns_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _dockerignore_regex(line.removeprefix("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def copy_sources(dockerfile: Dockerfile) -> set[str]:
    """Build-context paths that COPY instructions read (not `COPY --from=<stage>`)."""
    sources = set()
    for stage in dockerfile.stages:
        for args in stage.args_of("COPY"):
            tokens = [t for t in shlex.split(args) if not t.startswith("--")]
            if "--from=" not in args:
                sources.update(tokens[:-1])
    return sources
