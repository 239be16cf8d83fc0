"""Pipeline and environment settings, read from ``ABALONE_*`` environment variables with defaults.

Reading this module touches nothing but ``os.environ``: it is safe at DAG parse time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

from abalone_contract.constants import EVAL_SLICES, parse_slices
from abalone_pipeline.gate import GatePolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_DATA = PROJECT_ROOT / "include" / "data" / "abalone.data"


T = TypeVar("T", int, float)


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _number(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], what: str) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}") from None


def _schedule(raw: str | None, default: str | None) -> str | None:
    if not raw:
        return default
    return None if raw.strip().lower() == "none" else raw.strip()


def _policy(env: Mapping[str, str], name: str, default: GatePolicy) -> GatePolicy:
    """A JSON object of gate policy keys; those it leaves out keep their defaults."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        overrides = json.loads(raw)
        if not isinstance(overrides, dict):
            raise ValueError("expected a JSON object")
        return GatePolicy.from_dict(overrides, default)
    except (ValueError, TypeError) as exc:  # PolicyError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{name} is not a valid gate policy: {exc}") from None


def _hardening(env: Mapping[str, str]) -> Hardening:
    default = Hardening()
    cpus = _number(env, "ABALONE_TRAINER_CPUS", 0.0, float, "a number")
    if cpus < 0:
        raise ConfigError(f"ABALONE_TRAINER_CPUS must be positive, got {cpus}")
    # Empty: the default; "image": the image's own user; "none": no memory limit.
    user = env.get("ABALONE_TRAINER_USER") or default.user
    memory = env.get("ABALONE_TRAINER_MEMORY") or default.memory
    return Hardening(
        user=None if user == "image" else user,
        memory=None if memory == "none" else memory,
        cpus=cpus or None,
        pids_limit=_number(env, "ABALONE_TRAINER_PIDS_LIMIT", default.pids_limit, int, "a whole number"),
        shm_size=env.get("ABALONE_TRAINER_SHM_SIZE") or default.shm_size,
        read_only=_bool(env, "ABALONE_TRAINER_READ_ONLY", default.read_only),
        tmp_size=env.get("ABALONE_TRAINER_TMP_SIZE") or default.tmp_size,
    )


@dataclass(frozen=True)
class Hardening:
    """How trainer containers are confined (docs/failure-modes.md); every field is a setting.

    The defaults work on the DLC and on the stand-in: a non-root user with its HOME on the scratch tmpfs,
    every capability dropped, no privilege escalation, an init process, a read-only root filesystem.
    """

    user: str | None = "1000:1000"
    memory: str | None = "8g"
    cpus: float | None = None  # None: every CPU of the host
    pids_limit: int = 4096
    shm_size: str = "1g"
    read_only: bool = True
    # Scratch space (MLflow's downloads, Keras' config) when the root filesystem is read-only; it is RAM.
    tmp_size: str = "2g"

    def host_config(self) -> dict:
        """What the Docker provider has no parameter for, as ``docker.APIClient.create_host_config`` takes it."""
        extra: dict = {
            "init": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "pids_limit": self.pids_limit,
            "read_only": self.read_only,
        }
        if self.read_only:
            extra["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,exec,size={self.tmp_size}"}
        if self.memory:
            extra["memswap_limit"] = self.memory  # no swap beyond the memory limit
        if self.cpus:
            extra["nano_cpus"] = int(self.cpus * 1e9)
        return extra


@dataclass(frozen=True)
class Settings:
    """Everything that differs between the embedded default and production."""

    # MLflow: an http(s):// server, or a SageMaker managed MLflow ARN (handled by the sagemaker-mlflow plugin).
    tracking_uri: str = "http://127.0.0.1:5000"
    experiment: str = "abalone-retraining"
    model_name: str = "abalone-rings"
    champion_alias: str = "champion"
    # Where the outgoing champion goes when a new one is promoted: what abalone_rollback restores.
    previous_alias: str = "previous_champion"
    # Where staged data lives: s3://bucket/prefix in production, a local directory by default.
    object_store_uri: str = (PROJECT_ROOT / ".local" / "object-store").as_uri()
    source_uri: str = BUNDLED_DATA.as_uri()
    # Larger sources are refused, before download where the size is known: a guard against a wrong
    # source, not a memory limit (staging streams; its spool on local disk is about twice the source).
    max_source_bytes: int = 16 * 1024**3
    # Where staging spools a source while it validates and splits it (the system's temp dir if unset).
    staging_dir: str | None = None
    # Worker processes that scan and assemble a source (None: the CPUs the task may use; capped by the
    # source's blocks, so the nightly abalone file is staged in the task's own process).
    staging_workers: int | None = None
    # Default of the max_quarantine_fraction Param: the share of rows that may be quarantined.
    max_quarantine_fraction: float = 0.01
    # Drift against the previous staged dataset: warnings past these (see drift.DriftThresholds).
    drift_max_mean_shift: float = 0.2
    drift_max_share_shift: float = 0.05
    aws_conn_id: str = "aws_default"
    # Failures of a run and of its training task are published here too (the log line is always written).
    sns_topic_arn: str | None = None
    # The Airflow UI, for the link from each MLflow run back to its Airflow run.
    airflow_base_url: str = "http://localhost:8080"
    # The MLflow UI as a browser reaches it, for links (the tracking URI by default when it is http(s)):
    # in compose the workers use http://mlflow:5000; with a SageMaker ARN, links go to the SageMaker
    # AI console unless this is set.
    mlflow_ui_url: str | None = None
    trainer_image: str = "abalone-trainer:latest"
    gpu: bool = False
    docker_url: str = "unix://var/run/docker.sock"
    network_mode: str = "host"
    train_queue: str = "gpu"
    train_pool: str = "gpu"
    # One slot: promotions (and rollbacks) never run concurrently.
    registry_pool: str = "mlflow_registry"
    # The nightly schedule (cron, or "none" for manual runs only) and how many runs may be active at once;
    # concurrent runs share the gpu pool (training) and the registry pool (promotion).
    schedule: str | None = "0 2 * * *"
    max_active_runs: int = 1
    task_retries: int = 2
    retry_delay_seconds: int = 120
    # A try of train or evaluate that runs longer is stopped, reported as a timeout, and retried.
    train_timeout_minutes: float = 120
    evaluate_timeout_minutes: float = 30
    # Seconds a stopped trainer has to end its MLflow run before Docker kills it: under Airflow's 5 s
    # between SIGTERM and SIGKILL of a task marked failed, so the task can still remove its container.
    stop_grace_seconds: int = 3
    hardening: Hardening = field(default_factory=Hardening)
    # Where a run's source_uri may point: local directories, s3://bucket/prefix, https://host/path. Empty:
    # the bundled data and the object store. The configured ABALONE_SOURCE_URI is always allowed.
    allowed_sources: tuple[str, ...] = ()
    # The gate's default policy (see gate.GatePolicy); each run may override any of its keys.
    gate_policy: GatePolicy = field(default_factory=GatePolicy)
    # How the evaluation slices the test rows and how many paired-bootstrap resamples it draws.
    eval_slices: str = EVAL_SLICES
    bootstrap_resamples: int = 2000

    def __post_init__(self) -> None:
        if self.mlflow_ui_url is None and self.tracking_uri.startswith(("http://", "https://")):
            object.__setattr__(self, "mlflow_ui_url", self.tracking_uri.rstrip("/"))

    @property
    def local_store_root(self) -> Path | None:
        """The directory behind a ``file://`` object store, which the trainer container must mount."""
        parsed = urlparse(self.object_store_uri)
        return Path(unquote(parsed.path)) if parsed.scheme == "file" else None

    @property
    def source_prefixes(self) -> tuple[str, ...]:
        """Where sources may be read from: ``allowed_sources``, or the defaults; and the configured source."""
        configured = self.allowed_sources or (BUNDLED_DATA.parent.as_uri(), self.object_store_uri)
        return (*configured, self.source_uri)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        default = cls()

        def text(name: str, fallback: str) -> str:
            return env.get(name) or fallback

        settings = cls(
            tracking_uri=text("ABALONE_MLFLOW_TRACKING_URI", env.get("MLFLOW_TRACKING_URI") or default.tracking_uri),
            experiment=text("ABALONE_EXPERIMENT", default.experiment),
            model_name=text("ABALONE_MODEL_NAME", default.model_name),
            champion_alias=text("ABALONE_CHAMPION_ALIAS", default.champion_alias),
            object_store_uri=text("ABALONE_OBJECT_STORE_URI", default.object_store_uri).rstrip("/"),
            source_uri=text("ABALONE_SOURCE_URI", default.source_uri),
            max_quarantine_fraction=_number(
                env, "ABALONE_MAX_QUARANTINE_FRACTION", default.max_quarantine_fraction, float, "a number"
            ),
            drift_max_mean_shift=_number(
                env, "ABALONE_DRIFT_MAX_MEAN_SHIFT", default.drift_max_mean_shift, float, "a number"
            ),
            drift_max_share_shift=_number(
                env, "ABALONE_DRIFT_MAX_SHARE_SHIFT", default.drift_max_share_shift, float, "a number"
            ),
            max_source_bytes=_number(env, "ABALONE_MAX_SOURCE_BYTES", default.max_source_bytes, int, "a whole number"),
            staging_dir=env.get("ABALONE_STAGING_DIR") or None,
            staging_workers=_number(env, "ABALONE_STAGING_WORKERS", None, int, "a whole number"),
            aws_conn_id=text("ABALONE_AWS_CONN_ID", default.aws_conn_id),
            sns_topic_arn=env.get("ABALONE_SNS_TOPIC_ARN") or None,
            airflow_base_url=text("ABALONE_AIRFLOW_BASE_URL", default.airflow_base_url).rstrip("/"),
            mlflow_ui_url=env.get("ABALONE_MLFLOW_UI_URL", "").rstrip("/") or None,
            trainer_image=text("ABALONE_TRAINER_IMAGE", default.trainer_image),
            gpu=_bool(env, "ABALONE_GPU", default.gpu),
            docker_url=text("ABALONE_DOCKER_URL", default.docker_url),
            network_mode=text("ABALONE_DOCKER_NETWORK_MODE", default.network_mode),
            train_queue=text("ABALONE_TRAIN_QUEUE", default.train_queue),
            train_pool=text("ABALONE_TRAIN_POOL", default.train_pool),
            schedule=_schedule(env.get("ABALONE_SCHEDULE"), default.schedule),
            max_active_runs=_number(env, "ABALONE_MAX_ACTIVE_RUNS", default.max_active_runs, int, "a whole number"),
            task_retries=_number(env, "ABALONE_TASK_RETRIES", default.task_retries, int, "a whole number"),
            retry_delay_seconds=_number(
                env, "ABALONE_RETRY_DELAY_SECONDS", default.retry_delay_seconds, int, "a whole number"
            ),
            previous_alias=text("ABALONE_PREVIOUS_ALIAS", default.previous_alias),
            registry_pool=text("ABALONE_REGISTRY_POOL", default.registry_pool),
            gate_policy=_policy(env, "ABALONE_GATE_POLICY", default.gate_policy),
            train_timeout_minutes=_number(
                env, "ABALONE_TRAIN_TIMEOUT_MINUTES", default.train_timeout_minutes, float, "a number"
            ),
            evaluate_timeout_minutes=_number(
                env, "ABALONE_EVALUATE_TIMEOUT_MINUTES", default.evaluate_timeout_minutes, float, "a number"
            ),
            stop_grace_seconds=_number(
                env, "ABALONE_STOP_GRACE_SECONDS", default.stop_grace_seconds, int, "a whole number"
            ),
            hardening=_hardening(env),
            allowed_sources=tuple(
                item.strip() for item in env.get("ABALONE_ALLOWED_SOURCES", "").split(",") if item.strip()
            ),
            eval_slices=text("ABALONE_EVAL_SLICES", default.eval_slices),
            bootstrap_resamples=_number(
                env, "ABALONE_BOOTSTRAP_RESAMPLES", default.bootstrap_resamples, int, "a whole number"
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.tracking_uri.startswith(("http://", "https://", "arn:aws:sagemaker:")):
            raise ConfigError(
                f"ABALONE_MLFLOW_TRACKING_URI={self.tracking_uri!r}: use an http(s):// MLflow server "
                "or a SageMaker MLflow tracking server ARN (arn:aws:sagemaker:...)"
            )
        if self.mlflow_ui_url and not self.mlflow_ui_url.startswith(("http://", "https://")):
            raise ConfigError(f"ABALONE_MLFLOW_UI_URL={self.mlflow_ui_url!r}: use the http(s):// URL a browser opens")
        if self.sns_topic_arn and not self.sns_topic_arn.startswith("arn:aws:sns:"):
            raise ConfigError(f"ABALONE_SNS_TOPIC_ARN={self.sns_topic_arn!r}: use an SNS topic ARN (arn:aws:sns:...)")
        if not self.object_store_uri.startswith(("file://", "s3://")):
            raise ConfigError(
                f"ABALONE_OBJECT_STORE_URI={self.object_store_uri!r}: use s3://bucket/prefix or file:///dir"
            )
        if not 1 <= self.max_active_runs <= 16:
            raise ConfigError(f"ABALONE_MAX_ACTIVE_RUNS must be between 1 and 16, got {self.max_active_runs}")
        if self.schedule is not None and len(self.schedule.split()) not in (5, 6) and not self.schedule.startswith("@"):
            raise ConfigError(
                f"ABALONE_SCHEDULE={self.schedule!r}: use a cron expression, a preset like @daily, or none"
            )
        if not 0 <= self.task_retries <= 10:
            raise ConfigError(f"ABALONE_TASK_RETRIES must be between 0 and 10, got {self.task_retries}")
        if self.retry_delay_seconds < 0:
            raise ConfigError(f"ABALONE_RETRY_DELAY_SECONDS must be >= 0, got {self.retry_delay_seconds}")
        for name, alias in (
            ("ABALONE_CHAMPION_ALIAS", self.champion_alias),
            ("ABALONE_PREVIOUS_ALIAS", self.previous_alias),
        ):
            if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias) or not re.fullmatch(r"[\w-]+", alias):
                raise ConfigError(f"{name}={alias!r} is reserved by MLflow or not a valid alias; use e.g. champion")
        if self.champion_alias == self.previous_alias:
            raise ConfigError("ABALONE_CHAMPION_ALIAS and ABALONE_PREVIOUS_ALIAS must differ")
        if not 0 <= self.max_quarantine_fraction < 1:
            raise ConfigError(f"ABALONE_MAX_QUARANTINE_FRACTION must be in [0, 1), got {self.max_quarantine_fraction}")
        if self.max_source_bytes < 1:
            raise ConfigError(f"ABALONE_MAX_SOURCE_BYTES must be positive, got {self.max_source_bytes}")
        if self.staging_workers is not None and not 1 <= self.staging_workers <= 64:
            raise ConfigError(f"ABALONE_STAGING_WORKERS must be between 1 and 64, got {self.staging_workers}")
        if not 1000 <= self.bootstrap_resamples <= 100_000:
            raise ConfigError(
                f"ABALONE_BOOTSTRAP_RESAMPLES must be between 1000 and 100000, got {self.bootstrap_resamples}"
            )
        for name, minutes in (
            ("ABALONE_TRAIN_TIMEOUT_MINUTES", self.train_timeout_minutes),
            ("ABALONE_EVALUATE_TIMEOUT_MINUTES", self.evaluate_timeout_minutes),
        ):
            if not 0.25 <= minutes <= 24 * 60:
                raise ConfigError(f"{name} must be between 0.25 and 1440 (minutes), got {minutes}")
        if not 0 <= self.stop_grace_seconds <= 60:
            raise ConfigError(f"ABALONE_STOP_GRACE_SECONDS must be between 0 and 60, got {self.stop_grace_seconds}")
        hardening = self.hardening
        for name, size in (
            ("ABALONE_TRAINER_MEMORY", hardening.memory),
            ("ABALONE_TRAINER_SHM_SIZE", hardening.shm_size),
            ("ABALONE_TRAINER_TMP_SIZE", hardening.tmp_size),
        ):
            if size is not None and not re.fullmatch(r"\d+[bkmg]?", size):
                raise ConfigError(f"{name}={size!r}: use a size like 512m or 8g")
        if hardening.user is not None and not re.fullmatch(r"[\w.-]+(:[\w.-]+)?", hardening.user):
            raise ConfigError(f"ABALONE_TRAINER_USER={hardening.user!r}: use uid:gid (e.g. 1000:1000) or image")
        if hardening.pids_limit < 64:
            raise ConfigError(f"ABALONE_TRAINER_PIDS_LIMIT must be at least 64, got {hardening.pids_limit}")
        for prefix in self.allowed_sources:
            if not prefix.startswith(("file:///", "/", "s3://", "https://", "http://")):
                raise ConfigError(
                    f"ABALONE_ALLOWED_SOURCES: {prefix!r} is not a directory, s3://bucket/prefix or https://host/path"
                )
        try:  # the trainer's --slices parses it the same way; a typo fails here, at import
            parse_slices(self.eval_slices)
        except ValueError as exc:
            raise ConfigError(
                f"ABALONE_EVAL_SLICES={self.eval_slices!r}: {exc}; use 'sex', 'rings:<increasing upper edges>', "
                "both joined by ';' (e.g. sex;rings:7,11), or 'none'"
            ) from None


def source_allowed(uri: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``uri`` is one of ``prefixes`` or lies under one (decided on the URI alone: nothing is opened).

    Local paths are compared resolved, so neither ``..`` nor a symbolic link leads out of an allowed
    directory. Object and web URIs are compared by scheme, host and raw path (the key that will be read),
    on ``/`` boundaries; one with ``.`` or ``..`` segments, a query, a fragment or user info is refused.
    """
    if uri in prefixes:  # the configured source, as it was configured (a presigned URL keeps its query)
        return True

    def parts(text: str) -> tuple[str, str, str]:
        parsed = urlparse(text)
        if parsed.scheme in ("", "file"):
            return "file", "", str(Path(unquote(parsed.path) if parsed.scheme else text).resolve())
        return parsed.scheme.lower(), parsed.netloc.lower(), parsed.path or "/"

    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file") and (
        parsed.query or parsed.fragment or "@" in parsed.netloc or {".", ".."} & set(unquote(parsed.path).split("/"))
    ):
        return False
    scheme, host, path = parts(uri)
    for prefix in prefixes:
        allowed_scheme, allowed_host, allowed_path = parts(prefix)
        if (scheme, host) != (allowed_scheme, allowed_host):
            continue
        if path == allowed_path or path.startswith(allowed_path.rstrip("/") + "/"):
            return True
    return False
